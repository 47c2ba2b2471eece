"""How a workflow's steps send commands: through the runtime, with ids derived from the step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..model.errors import CommandError, command_error
from ..model.workflow import Calls, step_command_id
from ..wire import tracing
from ..wire.protocol import Reply

Ask = Callable[..., Awaitable[Reply]]
Advance = Callable[[str, str], Awaitable[bool]]  # run a workflow's step: whether another is due now
_Kick = tuple[str, str, str | None]  # workflow type, id, and the traceparent of the turn that kicked it
log = structlog.get_logger("memoir.workflow")


class StepCalls:
    """One run of one step: the `n`th command it sends gets the `n`th derived id, on every re-run."""

    def __init__(self, ask: Ask, workflow_type: str, workflow_id: str, step: str, visit: int, attempt: int) -> None:
        self.ask = ask
        self.workflow_type = workflow_type
        self.workflow_id = workflow_id
        self.step = step
        self.visit = visit
        self.attempt = attempt
        self.sent = 0

    async def send(
        self, entity_type: str, entity_id: str, command: str, args: Mapping[str, Any] | msgspec.Struct | None = None
    ) -> Any:
        self.sent += 1
        cid = step_command_id(self.workflow_type, self.workflow_id, self.visit, self.step, self.sent)
        try:
            reply = await self.ask(
                entity_type,
                entity_id,
                command,
                args,
                command_id=cid,
                correlation_id=f"wf:{self.workflow_type}/{self.workflow_id}",
                causation_id=cid,
            )
        except CommandError as exc:
            if type(exc) is CommandError:  # the runtime's plain error: the typed one, so steps can `except Rejected`
                raise command_error(str(exc.code), exc.message, exc.details) from None
            raise
        return reply.result


def step_calls(ask: Ask, workflow_type: str, workflow_id: str) -> Callable[[str, int, int], Calls]:
    """The factory a workflow entity is bound to when it is activated."""

    def make(step: str, visit: int, attempt: int) -> Calls:
        return StepCalls(ask, workflow_type, workflow_id, step, visit, attempt)

    return make


class Driver:
    """Runs a workflow's next step as soon as a turn moves it on, instead of waiting for its timer.

    Only a shortcut: the timer carried by the event that recorded the move is what makes the move
    durable. A kick dropped (the queue full, the process stopping) costs a timer's latency, never
    a step. One task runs a workflow's steps one after the other while each moves on to a step due
    now; a retry's backoff or a pause is left to the timer.
    """

    def __init__(self, advance: Advance, *, queue: int = 4096, concurrency: int = 256) -> None:
        self.advance = advance
        self.queue = queue
        self.send: MemoryObjectSendStream[_Kick] | None = None  # while running
        self.concurrency = concurrency
        self.kicks = 0
        self.dropped = 0

    def kick(self, workflow_type: str, workflow_id: str) -> None:
        try:
            if self.send is None:
                raise anyio.ClosedResourceError
            # traced: the steps continue the trace of the turn that moved the workflow on
            self.send.send_nowait((workflow_type, workflow_id, tracing.traceparent()))
            self.kicks += 1
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1

    async def run(self, scope: anyio.CancelScope) -> None:
        # A fixed pool of drivers reading one queue, as the NATS door's workers do: a task per
        # kick would cost a spawn (and a semaphore) per workflow, more than the queue does.
        send, receive = anyio.create_memory_object_stream[_Kick](self.queue)
        self.send = send
        try:
            with scope:
                async with receive, anyio.create_task_group() as tg:  # the workers stop before it closes
                    for _ in range(self.concurrency):
                        tg.start_soon(self._work, receive)
        finally:
            self.send = None
            send.close()

    async def _work(self, receive: MemoryObjectReceiveStream[_Kick]) -> None:
        async for workflow_type, workflow_id, parent in receive:
            if parent is None:
                await self._drive(workflow_type, workflow_id)
                continue
            attributes = {"memoir.workflow": f"{workflow_type}/{workflow_id}"}
            with tracing.span(f"drive {workflow_type}", parent=parent, attributes=attributes):
                await self._drive(workflow_type, workflow_id)

    async def _drive(self, workflow_type: str, workflow_id: str) -> None:
        try:
            while await self.advance(workflow_type, workflow_id):
                pass
        except CommandError as exc:  # the timer runs it again; nothing was recorded
            log.info("workflow step deferred to its timer", workflow=f"{workflow_type}/{workflow_id}", error=str(exc))
