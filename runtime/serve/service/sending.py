"""A cluster member's `Sender`: its consumers, timers and workflow steps reach the owner wherever it is.

The command runs here when this member owns the entity (the runtime's fence says so again in
the turn), and is otherwise forwarded to the owner as the NATS door forwards a client's
command: the same `route` loop, the same command id (so the owner's dedupe holds across
retries and moves), the deadline passed on, the owner's error code raised as the typed
`CommandError`. A forward is marked `Memoir-Inside`: the owner runs it without a caller, as
it would have run here. `Moved` never comes out: a command no owner took in time is
`overloaded`, which every sender retries with the same id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ...engine.runtime import Runtime
from ...model.access import Caller
from ...model.errors import CommandError, ErrorCode, Moved, Unavailable
from ...wire import tracing
from ...wire.protocol import (
    H_CAUSATION_ID,
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_TIMEOUT,
    H_TRACEPARENT,
    Reply,
    command_subject,
    decode_answer,
    encode_args,
    encode_error,
    encode_reply,
    header_id,
    trace_id,
)
from .forwarding import FORWARD_TIMEOUT, H_HOPS, H_INSIDE, Forwards, Router, forward_subject, route


async def ask_over_nats(
    nc: NATS,
    subject: str,
    args: bytes | Mapping[str, Any] | msgspec.Struct | None,
    *,
    timeout: float,
    command_id: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    who: str,
) -> Reply:
    """A command sent from inside a process to the members serving `subject` (a cluster member's
    forward to an owner, a region's to an entity's primary region), and its reply.

    The ids go along (the receiver's dedupe makes a retry with the same command id safe), the time
    left as `Memoir-Timeout-Ms`, and the current span's W3C `traceparent`, so the receiver's spans
    continue the sender's trace. The receiver's error code is raised as the typed `CommandError`;
    no answer in time, or NATS unreachable, is `unavailable` (it may have landed: retry with the
    same id). `NoRespondersError` is raised as it is: the caller knows what "nobody serves it" means.
    `who` names the receiver in errors.
    """
    ids = {H_COMMAND_ID: command_id, H_CORRELATION_ID: correlation_id, H_CAUSATION_ID: causation_id}
    sent = {name: value for name, value in ids.items() if value is not None}
    sent |= {**(headers or {}), H_TIMEOUT: str(max(1, int(timeout * 1000)))}
    if (parent := tracing.traceparent()) is not None:  # the receiver's spans continue this one
        sent[H_TRACEPARENT] = parent
    try:
        msg = await nc.request(subject, encode_args(args), timeout=timeout, headers=sent)
    except NoRespondersError:
        raise
    except (NatsTimeoutError, TimeoutError):
        raise Unavailable("no answer", f"{who} did not answer {subject} within {timeout:g}s") from None
    except NatsError as exc:  # reconnecting: a retry with the same id is safe
        raise Unavailable("connection lost", f"NATS is not reachable now ({exc}); retry") from None
    try:
        answer = decode_answer(msg.data)
    except ValueError as exc:
        raise CommandError(ErrorCode.INTERNAL, f"{who} answered {subject} with {exc}") from None
    answer.raise_for_error()  # the typed CommandError of the receiver's code
    return Reply(answer.result, answer.seq, answer.duplicate)


class MemberSender:
    """The `Sender` of a cluster member (alone, the runtime is the sender)."""

    def __init__(
        self, runtime: Runtime, nc: NATS, router: Router, *, prefix: str, timeout: float = FORWARD_TIMEOUT
    ) -> None:
        self.runtime = runtime
        self.nc = nc
        self.router = router
        self.prefix = prefix
        self.timeout = timeout  # how long a command without a deadline is routed before `overloaded`
        self.forwards = Forwards()

    async def ask(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: bytes | Mapping[str, Any] | msgspec.Struct | None = None,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        deadline: float | None = None,
        caller: Caller | None = None,
    ) -> Reply:
        async def here() -> Reply:
            return await self.runtime.ask(
                entity_type,
                entity_id,
                command,
                args,
                command_id=command_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
                deadline=deadline,
                caller=caller,
            )

        async def there(owner: str, left: float) -> Reply:
            if caller is not None:  # its token is not ours to pass on: outside callers come through a door
                raise CommandError(
                    ErrorCode.INTERNAL, "a command from outside reaches another member via the NATS door"
                )
            subject = forward_subject(self.prefix, owner, command_subject(self.prefix, entity_type, entity_id, command))
            return await ask_over_nats(
                self.nc,
                subject,
                args,
                timeout=left,
                command_id=command_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
                headers={H_INSIDE: "1", H_HOPS: "1"},
                who=owner,
            )  # NoRespondersError: routed again

        until = deadline if deadline is not None else time.monotonic() + self.timeout
        try:
            return await route(self.router, entity_type, entity_id, until, here, there, counts=self.forwards)
        except Moved as exc:  # no owner took it in time: the plain code, which every sender retries
            raise CommandError(ErrorCode.OVERLOADED, exc.message) from None


async def ask_here(
    runtime: Runtime,
    router: Router | None,
    entity_type: str,
    entity_id: str,
    command: str,
    args: bytes,
    *,
    caller: Caller,
    command_id: str | None = None,
    correlation_id: str | None = None,
    deadline: float | None = None,
) -> Reply | None:
    """An outside caller's command run in this process when it owns the entity; None when it does not.

    For a front door beside the NATS door (the HTTP gateway): what this member owns costs no NATS
    round trip; anything else (None: not ours, or it moved during the turn) goes the client's way,
    to the command subject, where the NATS door routes it with the caller's token.
    """
    if router is not None and router.owner(entity_type, entity_id) != router.member:
        return None
    try:
        return await runtime.ask(
            entity_type,
            entity_id,
            command,
            args,
            command_id=command_id,
            correlation_id=correlation_id,
            deadline=deadline,
            caller=caller,
        )
    except Moved:
        return None


async def answer_here(
    runtime: Runtime,
    router: Router | None,
    entity_type: str,
    entity_id: str,
    command: str,
    args: bytes,
    headers: Mapping[str, str],
    *,
    caller: Caller,
    timeout: float,
) -> bytes | None:
    """`ask_here` for a front door holding a command as NATS would carry it (ids in `headers`):
    the encoded answer, as the NATS door would have sent it, or None to send it over NATS."""
    try:
        reply = await ask_here(
            runtime,
            router,
            entity_type,
            entity_id,
            command,
            args,
            caller=caller,
            command_id=header_id(headers, H_COMMAND_ID),
            correlation_id=header_id(headers, H_CORRELATION_ID) or trace_id(headers.get(H_TRACEPARENT)),
            deadline=time.monotonic() + timeout,
        )
    except CommandError as exc:
        return encode_error(exc)
    if reply is None:
        return None
    try:
        return encode_reply(reply)
    except (TypeError, msgspec.EncodeError) as exc:
        return encode_error(CommandError(ErrorCode.INTERNAL, f"the reply cannot be encoded as JSON: {exc}"))
