"""The NATS protocol, in one place: subjects, ids, headers, the command/reply envelope, events as messages.

Documented in the README for clients in any language:
- a command is a request on `{prefix}.cmd.{type}.{token(id)}.{command}` whose payload is a JSON
  object of the command's arguments (empty means `{}`); optional headers `Memoir-Command-Id`
  (idempotency key), `Memoir-Correlation-Id`, `traceparent` (W3C; its trace id becomes the
  correlation id if none is given) and `Memoir-Timeout-Ms` (how long the sender waits: the
  runtime drops a request whose sender gave up before its turn comes) and `Authorization`
  (`Bearer <JWT>`: the caller, verified by a runtime configured with keys);
- the reply is `{"ok": true, "result": …, "seq": n}` (plus `"duplicate": true` for a repeated
  command id) or `{"ok": false, "error": {"code", "message", "details"}}` with a code of `ErrorCode`;
- an event of `{type}/{id}` is published on `{prefix}.events.{type}.{token(id)}` to the stream
  `{PREFIX}_EVENTS_{TYPE}`, with `Nats-Msg-Id: {type}/{id}/{seq}`;
- `token(id)` percent-encodes (RFC 3986, UTF-8) every character outside
  `A-Z a-z 0-9 - _ ~ : @ ! $ & ' ( ) + , ; =`, the dot included, so any id is
  exactly one subject token;
- the event payload is its JSON; metadata travels in `Memoir-*` headers (the entity type and id
  are in the subject; `Memoir-Principal` is the verified caller's subject, when there was one),
  where ids (command, correlation, causation, the principal, and the id inside `Nats-Msg-Id`)
  are encoded the same way so every header value is ASCII.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

import msgspec

from ..model.envelope import Envelope
from ..model.errors import CommandError, ConfigError, ErrorCode, command_error

_SAFE = "-_~:@!$&'()+,;="
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")

H_SEQ = "Memoir-Seq"
H_POSITION = "Memoir-Position"
H_EVENT = "Memoir-Event"
H_VERSION = "Memoir-Event-Version"
H_RECORDED = "Memoir-Recorded-At"
H_COMMAND_ID = "Memoir-Command-Id"
H_CORRELATION_ID = "Memoir-Correlation-Id"
H_CAUSATION_ID = "Memoir-Causation-Id"
H_MSG_ID = "Nats-Msg-Id"
H_TRACEPARENT = "traceparent"
H_TIMEOUT = "Memoir-Timeout-Ms"
H_AUTHORIZATION = "Authorization"  # `Bearer <JWT>` on a command (any front door passes it on as this header)
H_PRINCIPAL = "Memoir-Principal"  # on an event: the subject of the caller whose command decided it

MAX_ID_LENGTH = 256  # entity ids, in characters
MAX_HEADER_ID = 256  # command, correlation and causation ids, in characters
MAX_HEADER_BYTES = 16 * 1024  # a command's whole header block (a bearer token fits many times over)


@functools.lru_cache(maxsize=65536)
def token(entity_id: str) -> str:
    """An entity id as one NATS subject token (and as an ASCII header value)."""
    return quote(entity_id, safe=_SAFE).replace(".", "%2E")


def untoken(tok: str) -> str:
    """`token` undone; a UnicodeDecodeError (a ValueError) if the escapes are not UTF-8: `%FF` and
    `%FE` must not both read as U+FFFD, one id."""
    return unquote(tok, errors="strict")


def readable(text: str) -> bool:
    """Whether text came as valid UTF-8: `GuardedClient` keeps a header's bad bytes as lone surrogates."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_name(kind: str, name: str) -> str:
    """Entity type, view and consumer names become subject tokens and stream names: keep them plain."""
    if not _NAME.match(name):
        raise ConfigError(f"{kind} name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ConfigError(f"subject prefix {prefix!r} must be dot-separated tokens of A-Z a-z 0-9 _ -")
    return prefix


def command_subject(prefix: str, entity_type: str, entity_id: str, command: str) -> str:
    return f"{prefix}.cmd.{entity_type}.{token(entity_id)}.{command}"


def parse_command_subject(subject: str, prefix_tokens: int) -> tuple[str, str, str]:
    """`{prefix}.cmd.{type}.{token}.{command}` -> (type, id, command), or `invalid` naming the problem."""
    parts = subject.split(".")[prefix_tokens + 1 :]
    if len(parts) != 3:
        raise CommandError(
            ErrorCode.INVALID,
            f"subject {subject!r} must be <prefix>.cmd.<type>.<id>.<command> with the id percent-encoded"
            " into one token",
        )
    entity_type, tok, command = parts
    try:
        entity_id = untoken(tok)
    except UnicodeDecodeError:
        raise CommandError(
            ErrorCode.INVALID, f"entity id {tok[:60]!r} is not valid UTF-8 once percent-decoded"
        ) from None
    return entity_type, check_entity_id(entity_id), command


def check_entity_id(entity_id: object) -> str:
    """An id is any non-empty text up to MAX_ID_LENGTH characters without control characters."""
    if not isinstance(entity_id, str):
        raise CommandError(ErrorCode.INVALID, f"entity id must be a string, got {type(entity_id).__name__}")
    if not entity_id:
        raise CommandError(ErrorCode.INVALID, "entity id is empty")
    if len(entity_id) > MAX_ID_LENGTH:
        raise CommandError(ErrorCode.INVALID, f"entity id is {len(entity_id)} characters, the limit is {MAX_ID_LENGTH}")
    if not entity_id.isprintable():
        raise CommandError(ErrorCode.INVALID, f"entity id {entity_id!r} contains control characters")
    return entity_id


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
    """An event's headers. No position while it has none: an event the JetStream journal is about
    to store, whose position will be its stream sequence (a header would say 0 on every message)."""
    eid = token(env.entity_id)
    h = {
        H_MSG_ID: f"{env.entity_type}/{eid}/{env.seq}",
        H_SEQ: str(env.seq),
        H_EVENT: env.name,
        H_VERSION: str(env.version),
        H_RECORDED: str(env.recorded_at),
    }
    if env.position:
        h[H_POSITION] = str(env.position)
    if env.command_id is not None:
        h[H_COMMAND_ID] = token(env.command_id)
    if env.correlation_id is not None:
        h[H_CORRELATION_ID] = token(env.correlation_id)
    if env.causation_id is not None:
        h[H_CAUSATION_ID] = token(env.causation_id)
    if env.principal is not None:
        h[H_PRINCIPAL] = token(env.principal)
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
            principal=_untoken_opt(h.get(H_PRINCIPAL)),
            payload=payload,
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a Memoir event message (header {exc} missing or bad)") from None


# -- the command/reply envelope -------------------------------------------------------------------


class Reply(msgspec.Struct, frozen=True):
    """A successful command: its result, the entity's seq after it, and whether it was a repeat."""

    result: Any
    seq: int
    duplicate: bool = False


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    details: Any = None


class _Ok(msgspec.Struct, omit_defaults=True):
    ok: bool
    result: Any
    seq: int | None = None
    duplicate: bool = False


class _Failed(msgspec.Struct):
    ok: bool
    error: ErrorBody


class Answer(msgspec.Struct):
    """Any reply, as a client reads it: a command's, a view query's or an admin request's."""

    ok: bool
    result: Any = None
    seq: int = 0
    duplicate: bool = False
    error: ErrorBody | None = None

    def raise_for_error(self) -> None:
        """Raise the typed CommandError (`Rejected`, `Invalid`, …) of a failed answer."""
        if not self.ok:
            err = self.error or ErrorBody("internal", "error reply without an error")
            raise command_error(err.code, err.message, err.details)


_encoder = msgspec.json.Encoder()
_answer = msgspec.json.Decoder(Answer)


def encode_args(args: Mapping[str, Any] | msgspec.Struct | bytes | None) -> bytes:
    """A command's arguments as its request payload: bytes as they are, anything else as JSON (None: `{}`)."""
    return args if isinstance(args, bytes) else _encoder.encode(args if args is not None else {})


def encode_reply(reply: Reply) -> bytes:
    return _encoder.encode(_Ok(True, reply.result, reply.seq, reply.duplicate))


def encode_result(result: Any = None) -> bytes:
    """A success with no seq: view queries and admin requests."""
    return _encoder.encode(_Ok(True, result))


def encode_error(exc: CommandError) -> bytes:
    try:
        return _encoder.encode(_Failed(False, ErrorBody(str(exc.code), exc.message, exc.details)))
    except (TypeError, msgspec.EncodeError):  # details that do not encode must not cost the reply
        return _encoder.encode(_Failed(False, ErrorBody(str(exc.code), exc.message)))


def decode_answer(data: bytes) -> Answer:
    """Read a reply; an unreadable one is a ValueError quoting its start."""
    try:
        return _answer.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"unreadable reply {data[:200]!r}: {exc}") from None


def check_headers(headers: Mapping[str, str]) -> None:
    """A command's headers: every value valid UTF-8, MAX_HEADER_BYTES in all, or `invalid` naming the header."""
    size = 0
    for name, value in headers.items():
        if not readable(value):
            raise CommandError(ErrorCode.INVALID, f"header {name} is not valid UTF-8")
        size += len(name) + len(value) + 4
    if size > MAX_HEADER_BYTES:
        raise CommandError(ErrorCode.INVALID, f"headers are {size} bytes, the limit is {MAX_HEADER_BYTES}")


def header_id(headers: Mapping[str, Any], name: str) -> str | None:
    """A command, correlation or causation id header: 1-MAX_HEADER_ID printable characters, or `invalid`."""
    raw = headers.get(name)
    if raw is None:
        return None
    value = str(raw)  # nats-py hands non-ASCII header values over as email.header.Header
    if not value or len(value) > MAX_HEADER_ID or not value.isprintable():
        raise CommandError(
            ErrorCode.INVALID, f"header {name} must be 1-{MAX_HEADER_ID} printable characters, got {value[:40]!r}"
        )
    return value


def header_timeout(headers: Mapping[str, Any]) -> float | None:
    """`Memoir-Timeout-Ms` in seconds: a positive number of milliseconds, or `invalid`."""
    raw = headers.get(H_TIMEOUT)
    if raw is None:
        return None
    try:
        ms = float(str(raw))
    except ValueError:
        ms = -1.0
    if not 0 < ms <= 86_400_000:  # NaN fails this too
        raise CommandError(
            ErrorCode.INVALID, f"header {H_TIMEOUT} must be milliseconds between 1 and 86400000, got {str(raw)[:40]!r}"
        )
    return ms / 1000


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (version-traceid-parentid-flags): the part that spans services."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and _TRACE_ID.fullmatch(parts[1]) else None


def command_headers(
    command_id: str | None = None, correlation_id: str | None = None, timeout: float | None = None
) -> dict[str, str] | None:
    """The request headers a client sets; None when there are none (saves nats-py the header block)."""
    h = {}
    if command_id is not None:
        h[H_COMMAND_ID] = command_id
    if correlation_id is not None:
        h[H_CORRELATION_ID] = correlation_id
    if timeout is not None:
        h[H_TIMEOUT] = str(max(1, round(timeout * 1000)))
    return h or None
