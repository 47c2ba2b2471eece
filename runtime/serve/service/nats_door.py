"""Serves the command protocol (`wire.protocol`) over NATS, in front of a runtime.

Requests are taken by a fixed pool of worker tasks from a bounded queue; when
it is full the answer is `overloaded` at once, so load never turns into
unbounded memory. The queue is asyncio's, not an anyio memory stream: each
request passes through it, and anyio's receive costs a checkpoint, an Event and
a backend lookup per item (nats-py binds us to asyncio anyway). nats-py's read
loop puts each message in it directly (`door_inbox.py`), not through a
subscription queue and task of nats-py's own; a refusal it cannot send from
there (synchronously) is queued for a task that sends refusals. A bad request
is answered with `invalid` (the message names what was wrong) and never reaches
an entity. Subscriptions use a queue group, so several runtime processes can
share the subject space.

A request that says how long its sender waits (`Memoir-Timeout-Ms`) gets a
deadline counted from its arrival here; one still queued when it passes is
answered `overloaded` without running, so a sender that gave up and resent the
same command id never has both copies applied after a backlog.

In a cluster a `Router` says which process owns an entity. A command for an entity
owned elsewhere is sent as a request to `{prefix}.fwd.{member}.cmd.…`, which only
that process subscribes to, and the owner's answer is passed back to the client.
A request, not a publish with the client's reply subject: a member that has left
(its forward subscription drained) while our lease map still names it would drop a
publish silently, and the client would wait out its timeout; a request gets "no
responders" from NATS at once, and the command is routed again once the map moves
on. The owner checks ownership again inside the entity's turn
(`Runtime(admits=…)`); a command that finds its entity moved is passed on again
once the lease map names the next owner. Clients never see a hand-off. The loop is
`forwarding.route`, which the member's own sender (consumers, timers, workflow steps)
shares; a forward it sends is marked `Memoir-Inside` and run here without a caller.

A member also serves `{prefix}.cmd.@{member}.…`, its own copy of the command subjects, where
Memoir's clients that follow the shard map send (`shard_map.py`): most commands then take no
hop. It is served as a client's command (a stale map's is routed like any other). The shared
subscription leaves those four-token subjects out (`cmd.*`, `cmd.*.*`, `cmd.*.*.*`,
`cmd.*.*.*.*.>`), so one addressed to a member gone gets "no responders" at once.

What another NATS client can send is bounded before it costs memory: a payload over
`max_payload` is answered `invalid` on arrival, never queued; the queue holds at most
`max_queued_bytes` of payloads (then `overloaded`), and nats-py's buffer in front of it as
much (beyond that nats-py drops messages as a slow consumer, logged and counted). A subject,
reply subject or header that is not UTF-8, a header block over `MAX_HEADER_BYTES`, is
`invalid` (or dropped, with no reply subject to answer). A reply carries the answer alone,
never the request's headers (nats-py's `Msg.respond` echoes them: a bearer token included,
to an inbox other clients may share).

Another front door of the process (the HTTP gateway) serves a command through `answer`: the same
function as a message taken off NATS (checks, caller, ids, routing, tracing, metrics, command log),
run in its own task, the answer handed back instead of sent.

With a `Verifier` the `Authorization` header is checked before anything else of the command
(`auth.py`); a bad token is `unauthorized` whatever the rules. Every command from here carries
a caller (`ANONYMOUS` without a token), so the app's access rules apply to all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from ...engine.runtime import Runtime
from ...model.access import ANONYMOUS
from ...model.errors import CommandError, ErrorCode
from ...wire import tracing
from ...wire.nats import GuardedClient, respond
from ...wire.protocol import (
    H_AUTHORIZATION,
    H_CAUSATION_ID,
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_TIMEOUT,
    H_TRACEPARENT,
    Reply,
    check_headers,
    command_subject,
    encode_error,
    encode_reply,
    header_id,
    header_timeout,
    parse_command_subject,
    trace_id,
)
from . import door_inbox
from .auth import Verifier
from .command_log import CommandLog
from .forwarding import FORWARD_TIMEOUT, H_HOPS, H_INSIDE, MAX_HOPS, Forwards, Router, forward_subject, route
from .shard_map import DIRECT_MARK

log = structlog.get_logger("memoir.transport")

_AT_CAPACITY = encode_error(CommandError(ErrorCode.OVERLOADED, "the runtime is at capacity"))
_UNDECODABLE = encode_error(CommandError(ErrorCode.INVALID, "subject is not valid UTF-8"))

_REFUSALS = 1024  # refusals waiting to be sent; beyond, a refused message gets no answer
_FLUSH_TRIES = 6  # flushes (5 s each) for the server to confirm the subscriptions before the door says it serves
_SHARED = ("*", "*.*", "*.*.*", "*.*.*.*.>")  # `cmd.…` with any token count but the direct subjects' 4

Observer = Callable[[str, str, str, float], None]
"""Called after each command: (entity type, command, outcome code or "ok", seconds)."""
Answer = Callable[[Msg, bytes], Awaitable[None]]
"""Sends a command's answer: as a NATS reply, or to the front door that served it in-process."""
_IN_PROCESS = "_MEMOIR_IN_PROCESS"  # the reply subject of a command served in-process: someone waits, not on NATS


class NatsDoor:
    """Serves a runtime's commands over NATS. Run with `await door.run()` in a task group."""

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
        max_queued_bytes: int = 64 * 1024 * 1024,
        observe: Observer | None = None,
        router: Router | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.runtime = runtime
        self.verifier = verifier
        self.nc = nc
        self.prefix = prefix
        self.queue = queue
        self.workers = workers
        self.max_payload = max_payload
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0  # payloads waiting for a worker
        self.observe = observe
        self.router = router
        self.forwards = Forwards()
        self._prefix_tokens = len(prefix.split("."))
        self._fwd_prefix = f"{prefix}.fwd."
        self._direct_prefix = f"{prefix}.cmd.{DIRECT_MARK}"
        self._queue: asyncio.Queue[tuple[Msg, float] | None] = asyncio.Queue(backlog)
        self._refusals: asyncio.Queue[tuple[Msg, bytes] | None] = asyncio.Queue(_REFUSALS)
        self._closed = False
        self._sub: list[Any] | None = None
        self._fwd_sub: Any = None
        self._direct_sub: Any = None
        self.served = 0
        self.answering = 0  # commands `answer` serves in-process now
        self.command_log: CommandLog | None = None  # a line per command (`memoir run --log-commands`)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe and serve until cancelled or `stop()`ped; in-flight requests are finished first."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(self._worker)
            tg.start_soon(self._refuser)
            if self.router is not None:  # before the shared subject: forwards may come as soon as we are seen
                self._fwd_sub = await self._subscribe(self._fwd_subject(self.router.member) + ".>", "")
                # Outlives the shards, as the forward subscription does: clients following a map that
                # still names this member reach it during a hand-off and are routed on. Dropped first,
                # a direct subject has no one left, and a request the servers still route here (its
                # interest not yet gone from every node) would wait out its sender's timeout.
                self._direct_sub = await self._subscribe(f"{self._direct_prefix}{self.router.member}.>", "")
                # not `cmd.>`: the direct subjects (4 tokens) must reach their member alone
                self._sub = [await self._subscribe(f"{self.prefix}.cmd.{s}", self.queue) for s in _SHARED]
            else:
                self._sub = [await self._subscribe(f"{self.prefix}.cmd.>", self.queue)]
            # Started means served: the server has the subscriptions (a request sent the moment after,
            # from another connection, found no responders). A loaded machine may take longer than one
            # flush's timeout (a CI run's first request found no responders): flush again, a while.
            # A link down now re-subscribes on reconnect.
            for _ in range(_FLUSH_TRIES):
                try:
                    await self.nc.flush(timeout=5)
                    break
                except (TimeoutError, NatsError) as exc:
                    log.warning("nats door: subscriptions not confirmed by the server yet", error=repr(exc))
            task_status.started()

    async def _subscribe(self, subject: str, queue: str) -> Any:
        """Messages straight into the worker queue (`door_inbox`); else, with an older nats-py, through
        its callback, its buffer bounded (a flood of big messages is a slow consumer, not memory)."""
        sub = await self.nc.subscribe(subject, queue=queue)
        if not door_inbox.install(sub, self._take):
            await sub.unsubscribe()
            sub = await self.nc.subscribe(
                subject,
                queue=queue,
                cb=self._enqueue,
                pending_msgs_limit=self._queue.maxsize,
                pending_bytes_limit=self.max_queued_bytes,
            )
        if isinstance(self.nc, GuardedClient):
            self.nc.answer_undecodable(sub, _UNDECODABLE)
        return sub

    @property
    def forwarded(self) -> int:
        return self.forwards.forwarded

    @property
    def rerouted(self) -> int:
        """Forwards that found their target gone and were routed again."""
        return self.forwards.rerouted

    def serving(self) -> bool:
        """Subscribed and taking commands (for readiness probes)."""
        return self._sub is not None and not self._closed

    async def stop_taking(self) -> None:
        """Take no more requests on the shared subjects; forwards, and clients that follow a map
        still naming this member (its direct subject), still arrive.

        In a cluster this comes first on the way out: the shards are handed off next, and
        members that still see this one as an owner keep forwarding to it until they do.
        """
        subs, self._sub = self._sub or [], None
        for sub in subs:
            with contextlib.suppress(NatsError):
                await sub.drain()  # unsubscribe would drop what nats-py holds but has not handed us yet

    async def stop(self) -> None:
        """Stop taking requests; the workers finish the queued ones and exit."""
        await self.stop_taking()
        for sub in (self._direct_sub, self._fwd_sub):
            if sub is not None:
                with contextlib.suppress(NatsError):
                    await sub.drain()
        self._direct_sub = self._fwd_sub = None
        if not self._closed:
            self._closed = True
            for _ in range(self.workers):  # after the queued requests, one stop sign per worker
                await self._queue.put(None)
            await self._refusals.put(None)

    def _take(self, msg: Msg) -> None:
        """A message off the socket (called in nats-py's read loop): queued for a worker, or refused."""
        if self._closed:
            return  # shutting down: the client times out and may retry elsewhere
        size = len(msg.data)
        if size > self.max_payload:  # refused now: never held while it waits for a worker
            why = f"payload is {size} bytes, the limit is {self.max_payload}"
            self._refuse(msg, encode_error(CommandError(ErrorCode.INVALID, why)))
        elif self.queued_bytes + size > self.max_queued_bytes or self._queue.full():
            self._refuse(msg, _AT_CAPACITY)
        else:
            self._queue.put_nowait((msg, time.monotonic()))
            self.queued_bytes += size

    async def _enqueue(self, msg: Msg) -> None:
        """`_take` as a nats-py callback (the way in when `door_inbox` cannot be installed)."""
        self._take(msg)

    def _refuse(self, msg: Msg, body: bytes) -> None:
        """Answer `body` soon (the refuser task sends it); the payload is not kept meanwhile."""
        if not msg.reply:
            return
        try:
            self._refusals.put_nowait((Msg(msg._client, msg.subject, msg.reply), body))
        except asyncio.QueueFull:  # refusing faster than it can say so: this one waits out its timeout
            if isinstance(self.nc, GuardedClient):
                self.nc.slow_consumer(RuntimeError("the NATS door's refusals are full"))

    async def _refuser(self) -> None:
        while (item := await self._refusals.get()) is not None:
            await self._respond(*item)

    async def _worker(self) -> None:
        serve = self._serve if tracing.tracer() is None else self._serve_traced  # looked up once
        while (item := await self._queue.get()) is not None:
            self.queued_bytes -= len(item[0].data)
            await serve(*item)

    async def answer(
        self, entity_type: str, entity_id: str, command: str, payload: bytes, headers: dict[str, str]
    ) -> bytes | None:
        """Serve a command that another front door of this process holds (the HTTP gateway) as one taken
        off NATS: the same checks, caller, dedupe ids, routing, tracing, metrics and command log. The
        encoded answer, or None when none came in time (a forward the owner did not answer).

        Run here when this member owns the entity: no NATS round trip, no queue. A command for another
        member's entity is forwarded to its owner, as a NATS client's would be. At most `backlog` at once
        (then `overloaded`), as the queue bounds NATS commands: load never turns into unbounded memory.
        """
        if self.answering >= self._queue.maxsize:  # as many as the queue holds: overloaded, as it would be
            return _AT_CAPACITY
        msg = Msg(self.nc, command_subject(self.prefix, entity_type, entity_id, command), _IN_PROCESS, payload, headers)
        answered: list[bytes] = []

        async def keep(_: Msg, body: bytes) -> None:
            answered.append(body)

        serve = self._serve if tracing.tracer() is None else self._serve_traced
        self.answering += 1
        try:
            await serve(msg, time.monotonic(), keep)
        finally:
            self.answering -= 1
        return answered[0] if answered else None

    async def _serve_traced(self, msg: Msg, arrived: float, answer: Answer | None = None) -> str:
        """`_serve` in a server span, the child of the request's `traceparent` if it has one.

        Sampling is decided first, from the traceparent's flags or a trace id drawn for a new root
        (`tracing.sampled`): a command not sampled is served as if tracing were off, no span made.
        """
        parent = (msg.headers or {}).get(H_TRACEPARENT)
        trace = tracing.sampled(parent)
        if trace is None:
            return await self._serve(msg, arrived, answer)
        # named from the subject's tokens, checked by `_serve` (the span name does not need the id)
        parts = self._command_subject(msg)[0].split(".")[self._prefix_tokens + 1 :]
        name = f"serve {parts[0]}.{parts[2]}" if len(parts) == 3 else "serve ?"
        attributes = {"memoir.subject": msg.subject}
        with tracing.span(name, kind=tracing.SERVER, parent=parent, attributes=attributes, trace_id=trace) as sp:
            # this span's traceparent in place of the caller's: the forward and the correlation id
            # (the trace id, stored with the events for those that react to them) follow it
            if (mine := tracing.traceparent()) is not None:
                msg.headers = {**(msg.headers or {}), H_TRACEPARENT: mine}
            outcome = await self._serve(msg, arrived, answer)
            tracing.set_outcome(sp, outcome)
            return outcome

    def _fwd_subject(self, member: str) -> str:
        return f"{self.prefix}.fwd.{member}"

    def _command_subject(self, msg: Msg) -> tuple[str, int]:
        """The command subject, and how many members forwarded it so far (0 from a client)."""
        if msg.subject.startswith(self._direct_prefix):  # `{prefix}.cmd.@{member}.…` -> `{prefix}.cmd.…`
            return f"{self.prefix}.cmd." + msg.subject[len(self._direct_prefix) :].split(".", 1)[-1], 0
        if not msg.subject.startswith(self._fwd_prefix):
            return msg.subject, 0
        # `{prefix}.fwd.{member}.cmd.…` -> `{prefix}.cmd.…`
        subject = self.prefix + "." + msg.subject[len(self.prefix) + 1 :].split(".", 2)[2]
        hops = (msg.headers or {}).get(H_HOPS, "")
        return subject, int(hops) if hops.isdigit() else MAX_HOPS

    async def _serve(self, msg: Msg, arrived: float, answer: Answer | None = None) -> str:
        """Answer one request (with `answer`, else as a NATS reply); its outcome code ("ok", an error
        code, or "forwarded")."""
        answer = answer or self._respond
        started = time.perf_counter()
        entity_type = entity_id = command = "?"
        seq: int | None = None
        try:
            subject, hops = self._command_subject(msg)
            entity_type, entity_id, command = parse_command_subject(subject, self._prefix_tokens)
            headers = msg.headers or {}
            check_headers(headers)
            inside = hops > 0 and headers.get(H_INSIDE) == "1"  # a member's own command (fwd is members only)
            if inside:
                caller = None
            else:
                caller = ANONYMOUS if self.verifier is None else self.verifier.verify(headers.get(H_AUTHORIZATION))
            timeout = header_timeout(headers)
            deadline = None if timeout is None else arrived + timeout
            ask = functools.partial(
                self.runtime.ask,
                entity_type,
                entity_id,
                command,
                msg.data,
                command_id=header_id(headers, H_COMMAND_ID),
                correlation_id=header_id(headers, H_CORRELATION_ID) or trace_id(headers.get(H_TRACEPARENT)),
                causation_id=header_id(headers, H_CAUSATION_ID) if inside else None,
                deadline=deadline,
                caller=caller,
            )
            if self.router is None:
                reply = await ask()
            else:
                routed = await self._route(msg, subject, hops, entity_type, entity_id, deadline, ask, answer)
                if routed is None:  # forwarded: the owner answers the sender itself
                    self.served += 1
                    return "forwarded"
                reply = routed
            seq = reply.seq
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
        await answer(msg, body)
        self.served += 1
        if self.observe is not None:
            self.observe(entity_type, command, outcome, time.perf_counter() - started)
        if self.command_log is not None:
            took = time.perf_counter() - started
            self.command_log.served(entity_type, entity_id, command, msg.headers, outcome, took, seq)
        return outcome

    async def _route(
        self,
        msg: Msg,
        subject: str,
        hops: int,
        entity_type: str,
        entity_id: str,
        deadline: float | None,
        ask: Callable[[], Awaitable[Reply]],
        answer: Answer,
    ) -> Reply | None:
        """Run the command here if this member owns its entity; else pass it on (None).

        A forward is a request whose answer this member passes back to the client (`route`
        routes it again when it finds no responder). The old owner, whose forward subscription
        outlives its shards, passes late arrivals on the same way.
        """
        assert self.router is not None

        async def there(owner: str, left: float) -> Reply | None:
            headers = dict(msg.headers or {})
            if hops == 0:
                headers.pop(H_INSIDE, None)  # a client cannot claim to be a member
            headers[H_TIMEOUT] = str(max(1, int(left * 1000)))  # the owner drops it once the sender stops waiting
            headers[H_HOPS] = str(hops + 1)
            target = forward_subject(self.prefix, owner, subject)
            with tracing.span(f"forward {entity_type}", kind=tracing.CLIENT, attributes={"memoir.owner": owner}):
                if (parent := tracing.traceparent()) is not None:  # the owner's spans continue this one
                    headers[H_TRACEPARENT] = parent
                if not msg.reply:  # a publish: nobody waits for an answer, so nobody to tell of a loss
                    await self.nc.publish(target, msg.data, headers=headers)
                    return None
                try:
                    owners = await self.nc.request(target, msg.data, timeout=left, headers=headers)
                except NatsTimeoutError:
                    return None  # the sender has stopped waiting too; the owner may still have run it
            await answer(msg, owners.data)  # the owner's answer, passed on as it is
            return None

        until = deadline if deadline is not None else time.monotonic() + FORWARD_TIMEOUT
        return await route(
            self.router,
            entity_type,
            entity_id,
            until,
            ask,
            there,
            counts=self.forwards,
            may_forward=hops < MAX_HOPS,
        )

    async def _respond(self, msg: Msg, body: bytes) -> None:
        try:
            await respond(msg, body)  # the answer alone, not the request's headers with it
        except NatsError as exc:
            log.warning("reply not sent", subject=msg.subject, error=str(exc))
