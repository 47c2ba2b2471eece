"""Serves the command protocol (`wire.protocol`) over NATS, in front of a runtime.

Requests are taken by a fixed pool of worker tasks from a bounded queue; when
it is full the answer is `overloaded` at once, so load never turns into
unbounded memory. The queue is asyncio's, not an anyio memory stream: each
request passes through it, and anyio's receive costs a checkpoint, an Event and
a backend lookup per item (nats-py binds us to asyncio anyway). A bad request
is answered with `invalid` (the message names what was wrong) and never reaches
an entity. Subscriptions use a queue group, so several runtime processes can
share the subject space.

A request that says how long its sender waits (`Memoir-Timeout-Ms`) gets a
deadline counted from its arrival here; one still queued when it passes is
answered `overloaded` without running, so a sender that gave up and resent the
same command id never has both copies applied after a backlog.
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

from ..engine.runtime import Runtime
from ..model.errors import CommandError, ErrorCode
from ..wire.protocol import (
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_TRACEPARENT,
    encode_error,
    encode_reply,
    header_id,
    header_timeout,
    parse_command_subject,
    trace_id,
)

log = structlog.get_logger("memoir.transport")

Observer = Callable[[str, str, str, float], None]
"""Called after each command: (entity type, command, outcome code or "ok", seconds)."""


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
        self._queue: asyncio.Queue[tuple[Msg, float] | None] = asyncio.Queue(backlog)
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
            self._queue.put_nowait((msg, time.monotonic()))
        except asyncio.QueueFull:
            await self._respond(msg, encode_error(CommandError(ErrorCode.OVERLOADED, "the runtime is at capacity")))

    async def _worker(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self._serve(*item)

    async def _serve(self, msg: Msg, arrived: float) -> None:
        started = time.perf_counter()
        entity_type = command = "?"
        try:
            entity_type, entity_id, command = parse_command_subject(msg.subject, self._prefix_tokens)
            if len(msg.data) > self.max_payload:
                raise CommandError(
                    ErrorCode.INVALID, f"payload is {len(msg.data)} bytes, the limit is {self.max_payload}"
                )
            headers = msg.headers or {}
            timeout = header_timeout(headers)
            reply = await self.runtime.ask(
                entity_type,
                entity_id,
                command,
                msg.data,
                command_id=header_id(headers, H_COMMAND_ID),
                correlation_id=header_id(headers, H_CORRELATION_ID) or trace_id(headers.get(H_TRACEPARENT)),
                deadline=None if timeout is None else arrived + timeout,
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
