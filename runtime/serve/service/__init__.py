"""The embeddable service: a runtime with everything that moves its events, and its front doors.

`Service` runs the runtime, the outbox publisher, views, consumers and timers (each once per
cluster); `NatsDoor` serves the command protocol over NATS in front of it and `HttpGateway`
serves HTTP; `Client` is the other end. An application may embed these without `memoir run`.
"""

from ._service import Service
from .admin import Admin
from .auth import VerificationKey, Verifier, load_verifier
from .client import Client, NotServing
from .embedded_nats import EmbeddedNats
from .http import HttpGateway
from .nats_door import NatsDoor

__all__ = [
    "Admin",
    "Client",
    "EmbeddedNats",
    "HttpGateway",
    "NatsDoor",
    "NotServing",
    "Service",
    "VerificationKey",
    "Verifier",
    "load_verifier",
]
