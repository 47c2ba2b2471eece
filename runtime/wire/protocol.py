"""How Memoir names things on NATS, and how an envelope travels as a message.

Documented in the README for clients in any language:
- an event of `{type}/{id}` is published on `{prefix}.events.{type}.{token(id)}`
  to the stream `{PREFIX}_EVENTS_{TYPE}`, with `Nats-Msg-Id: {type}/{id}/{seq}`;
- `token(id)` percent-encodes (RFC 3986, UTF-8) every character outside
  `A-Z a-z 0-9 - _ ~ : @ ! $ & ' ( ) + , ; =`, the dot included, so any id is
  exactly one subject token;
- the payload is the event's JSON; metadata travels in `Memoir-*` headers
  (the entity type and id are in the subject), where ids (command,
  correlation, causation, and the id inside `Nats-Msg-Id`) are encoded the
  same way so every header value is ASCII.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from ..model.envelope import Envelope
from ..model.errors import ConfigError

_SAFE = "-_~:@!$&'()+,;="
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

H_SEQ = "Memoir-Seq"
H_POSITION = "Memoir-Position"
H_EVENT = "Memoir-Event"
H_VERSION = "Memoir-Event-Version"
H_RECORDED = "Memoir-Recorded-At"
H_COMMAND_ID = "Memoir-Command-Id"
H_CORRELATION_ID = "Memoir-Correlation-Id"
H_CAUSATION_ID = "Memoir-Causation-Id"
H_MSG_ID = "Nats-Msg-Id"


@functools.lru_cache(maxsize=65536)
def token(entity_id: str) -> str:
    """An entity id as one NATS subject token (and as an ASCII header value)."""
    return quote(entity_id, safe=_SAFE).replace(".", "%2E")


def untoken(tok: str) -> str:
    return unquote(tok)


def check_name(kind: str, name: str) -> str:
    """Entity type, view and consumer names become subject tokens and stream names: keep them plain."""
    if not _NAME.match(name):
        raise ConfigError(f"{kind} name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ConfigError(f"subject prefix {prefix!r} must be dot-separated tokens of A-Z a-z 0-9 _ -")
    return prefix


def event_subject(prefix: str, entity_type: str, entity_id: str) -> str:
    return f"{prefix}.events.{entity_type}.{token(entity_id)}"


def events_filter(prefix: str, entity_type: str) -> str:
    return f"{prefix}.events.{entity_type}.*"


def stream_prefix(prefix: str) -> str:
    """JetStream stream and bucket names cannot hold dots: `acme.shop` -> `ACME_SHOP`."""
    return prefix.replace(".", "_").upper()


def stream_name(prefix: str, entity_type: str) -> str:
    """The outbox stream of an entity type: `memoir` + `inventory` -> `MEMOIR_EVENTS_INVENTORY`."""
    return f"{stream_prefix(prefix)}_EVENTS_{entity_type.upper()}"


def event_headers(env: Envelope) -> dict[str, str]:
    eid = token(env.entity_id)
    h = {
        H_MSG_ID: f"{env.entity_type}/{eid}/{env.seq}",
        H_SEQ: str(env.seq),
        H_POSITION: str(env.position),
        H_EVENT: env.name,
        H_VERSION: str(env.version),
        H_RECORDED: str(env.recorded_at),
    }
    if env.command_id is not None:
        h[H_COMMAND_ID] = token(env.command_id)
    if env.correlation_id is not None:
        h[H_CORRELATION_ID] = token(env.correlation_id)
    if env.causation_id is not None:
        h[H_CAUSATION_ID] = token(env.causation_id)
    return h


def _untoken_opt(value: str | None) -> str | None:
    return None if value is None else untoken(value)


def parse_event_subject(subject: str) -> tuple[str, str]:
    """`{prefix}.events.{type}.{token}` -> (type, id)."""
    parts = subject.rsplit(".", 3)
    if len(parts) != 4 or parts[1] != "events":
        raise ValueError(f"not a Memoir event subject: {subject!r}")
    return parts[2], untoken(parts[3])


def envelope_from_message(subject: str, headers: Mapping[str, str] | None, payload: bytes) -> Envelope:
    """Rebuild an envelope from a published event; a message that is not one is a ValueError."""
    h = headers or {}
    entity_type, entity_id = parse_event_subject(subject)
    try:
        return Envelope(
            entity_type=entity_type,
            entity_id=entity_id,
            seq=int(h[H_SEQ]),
            position=int(h.get(H_POSITION, 0)),
            name=h[H_EVENT],
            version=int(h.get(H_VERSION, 1)),
            recorded_at=int(h.get(H_RECORDED, 0)),
            command_id=_untoken_opt(h.get(H_COMMAND_ID)),
            correlation_id=_untoken_opt(h.get(H_CORRELATION_ID)),
            causation_id=_untoken_opt(h.get(H_CAUSATION_ID)),
            payload=payload,
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a Memoir event message (header {exc} missing or bad)") from None
