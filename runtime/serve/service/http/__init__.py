"""The HTTP gateway of `memoir run --http-port`: commands, reads, a live tail and /openapi.json."""

from .gateway import HttpGateway

__all__ = ["HttpGateway"]
