"""The NATS command protocol: request/reply on `{prefix}.cmd.{type}.{token(id)}.{command}`.

Wire protocol (also in the README, for clients in any language):
- request payload: a JSON object of the command's arguments (empty means `{}`);
- optional headers `Memoir-Command-Id` (idempotency key), `Memoir-Correlation-Id`,
  `traceparent` (W3C; its trace id becomes the correlation id if none is given);
- reply: `{"ok": true, "result": …, "seq": n}` (plus `"duplicate": true` for a
  repeated command id) or `{"ok": false, "error": {"code", "message", "details"}}`.

Requests are taken by a fixed pool of worker tasks from a bounded queue; when
it is full the answer is `overloaded` at once, so load never turns into
unbounded memory. The queue is asyncio's, not an anyio memory stream: each
request passes through it, and anyio's receive costs a checkpoint, an Event and
a backend lookup per item (nats-py binds us to asyncio anyway). A bad request
is answered with `invalid` (the message names what was wrong) and never reaches
an entity. Subscriptions use a queue group, so several runtime processes can
share the subject space.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ..engine.actor import Reply
from ..engine.runtime import MAX_ID_LENGTH, Runtime
from ..model.errors import CommandError, ErrorCode
from ..wire.protocol import untoken

log = structlog.get_logger("memoir.transport")

H_COMMAND_ID = "Memoir-Command-Id"
H_CORRELATION_ID = "Memoir-Correlation-Id"
H_TRACEPARENT = "traceparent"
MAX_HEADER_ID = 256


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    details: Any = None


class OkReply(msgspec.Struct, omit_defaults=True):
    ok: bool
    result: Any
    seq: int
    duplicate: bool = False


class ErrorReply(msgspec.Struct):
    ok: bool
    error: ErrorBody


_encoder = msgspec.json.Encoder()

Observer = Callable[[str, str, str, float], None]
"""Called after each command: (entity type, command, outcome code or "ok", seconds)."""


def encode_error(exc: CommandError) -> bytes:
    try:
        return _encoder.encode(ErrorReply(False, ErrorBody(str(exc.code), exc.message, exc.details)))
    except (TypeError, msgspec.EncodeError):  # details that do not encode must not cost the reply
        return _encoder.encode(ErrorReply(False, ErrorBody(str(exc.code), exc.message)))


def encode_reply(reply: Reply) -> bytes:
    return _encoder.encode(OkReply(True, reply.result, reply.seq, reply.duplicate))


def parse_subject(subject: str, prefix_tokens: int) -> tuple[str, str, str]:
    """`{prefix}.cmd.{type}.{token}.{command}` -> (type, id, command), or `invalid` naming the problem."""
    parts = subject.split(".")[prefix_tokens + 1 :]
    if len(parts) != 3:
        raise CommandError(
            ErrorCode.INVALID,
            f"subject {subject!r} must be <prefix>.cmd.<type>.<id>.<command> with the id percent-encoded"
            " into one token",
        )
    entity_type, tok, command = parts
    entity_id = untoken(tok)
    if len(entity_id) > MAX_ID_LENGTH:
        raise CommandError(ErrorCode.INVALID, f"entity id is {len(entity_id)} characters, the limit is {MAX_ID_LENGTH}")
    return entity_type, entity_id, command


def _header_id(headers: dict[str, str], name: str) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    value = str(raw)  # nats-py hands non-ASCII header values over as email.header.Header
    if not value or len(value) > MAX_HEADER_ID or not value.isprintable():
        raise CommandError(
            ErrorCode.INVALID, f"header {name} must be 1-{MAX_HEADER_ID} printable characters, got {value[:40]!r}"
        )
    return value


def _trace_id(traceparent: str | None) -> str | None:
    # version-traceid-parentid-flags; the trace id is the part that spans services
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class Transport:
    """Serves a runtime's commands over NATS. Run with `await transport.run()` in a task group."""

    def __init__(
        self,
        runtime: Runtime,
        nc: NATS,
        *,
        prefix: str = "memoir",
        queue: str = "memoir",
        workers: int = 256,
        backlog: int = 4096,
        max_payload: int = 1024 * 1024,
        observe: Observer | None = None,
    ) -> None:
        self.runtime = runtime
        self.nc = nc
        self.prefix = prefix
        self.queue = queue
        self.workers = workers
        self.max_payload = max_payload
        self.observe = observe
        self._prefix_tokens = len(prefix.split("."))
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue(backlog)
        self._closed = False
        self._sub: Any = None
        self.served = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe and serve until cancelled or `stop()`ped; in-flight requests are finished first."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(self._worker)
            self._sub = await self.nc.subscribe(f"{self.prefix}.cmd.>", queue=self.queue, cb=self._enqueue)
            task_status.started()

    async def stop(self) -> None:
        """Stop taking requests; the workers finish the queued ones and exit."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        if not self._closed:
            self._closed = True
            for _ in range(self.workers):  # after the queued requests, one stop sign per worker
                await self._queue.put(None)

    async def _enqueue(self, msg: Msg) -> None:
        if self._closed:
            return  # shutting down: the client times out and may retry elsewhere
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            await self._respond(msg, encode_error(CommandError(ErrorCode.OVERLOADED, "the runtime is at capacity")))

    async def _worker(self) -> None:
        while (msg := await self._queue.get()) is not None:
            await self._serve(msg)

    async def _serve(self, msg: Msg) -> None:
        started = time.perf_counter()
        entity_type = command = "?"
        try:
            entity_type, entity_id, command = parse_subject(msg.subject, self._prefix_tokens)
            if len(msg.data) > self.max_payload:
                raise CommandError(
                    ErrorCode.INVALID, f"payload is {len(msg.data)} bytes, the limit is {self.max_payload}"
                )
            headers = msg.headers or {}
            reply = await self.runtime.ask(
                entity_type,
                entity_id,
                command,
                msg.data,
                command_id=_header_id(headers, H_COMMAND_ID),
                correlation_id=_header_id(headers, H_CORRELATION_ID) or _trace_id(headers.get(H_TRACEPARENT)),
            )
            try:
                body = encode_reply(reply)
            except (TypeError, msgspec.EncodeError) as exc:
                raise CommandError(ErrorCode.INTERNAL, f"the reply cannot be encoded as JSON: {exc}") from exc
            outcome = "ok"
        except CommandError as exc:
            body, outcome = encode_error(exc), str(exc.code)
        except Exception as exc:  # nothing from outside may take the process down
            log.error("request failed", subject=msg.subject, exc_info=exc)
            body, outcome = encode_error(CommandError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")), "internal"
        await self._respond(msg, body)
        self.served += 1
        if self.observe is not None:
            self.observe(entity_type, command, outcome, time.perf_counter() - started)

    async def _respond(self, msg: Msg, body: bytes) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        try:
            await msg.respond(body)
        except NatsError as exc:
            log.warning("reply not sent", subject=msg.subject, error=str(exc))
