"""Firing timers: a relay from the journal, JetStream message schedules, and a firer into the runtime.

The journal is the source of truth (a timer is an event, model/timer_events.py); this module fires them.

- `TimerRelay` tails the journal by position, like the outbox publisher. A timer due within
  its horizon (30 s) is armed in memory and fired at its time; the relay's checkpoint stays
  below every armed timer, so after a crash the journal hands it back. A timer further out, or
  recurring, becomes a JetStream message schedule (nats-server 2.12+, ADR-51): nats-server
  keeps it durably, keeps one per subject (a newer one replaces it), forgets a purged one (a
  cancel), and fires it at its time (`@at`) or repeatedly (`@every`) into the same stream.
  Why both: nats-server's scheduler fires up to ~300 ms late under load (measured at 1,000
  schedules/s), too coarse for a workflow's watchdog or a short hold, fine for the far ones.
- `TimerFirer` is a durable pull consumer on those firings. It acknowledges one only after its
  command was answered: a crash in between redelivers it (after `ACK_WAIT`).

Either way the command carries an id derived from the timer (`fire_command_id`), so a timer
fired twice changes its target once; and a firing never runs before its due time (one that
arrives early waits). After downtime the relay catches up from its checkpoint and nats-server
fires what fell due meanwhile: overdue timers fire at start-up. Both run once per cluster.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from ..journal.base import Journal, Selection
from ..model.backoff import Backoff
from ..model.envelope import Envelope
from ..model.errors import CommandError, ErrorCode
from ..model.timer_events import (
    CANCELLED,
    SCHEDULED,
    PendingTimer,
    TimerOp,
    TimerScheduled,
    decode_op,
    fire_command_id,
    fold_op,
)
from ..model.workflow import wake_op
from ..wire import tracing
from ..wire.protocol import Reply
from ..wire.timer_subjects import (
    H_GENERATION,
    H_SCHEDULE,
    H_SCHEDULE_TARGET,
    TimerFire,
    fire_subject,
    schedule_header,
    schedule_subject,
    timer_stream,
    timer_subjects,
)
from ._pull import Puller, stream_sequence
from .consumer import dead_letter_subject
from .publisher import StreamSettings

log = structlog.get_logger("memoir.timers")

CHECKPOINT = "timers"
DURABLE = "timers"
ACK_WAIT = 5.0  # seconds before a firing held by a process that died is delivered again
# seconds one idle pull for firings waits on the server: a firing is delivered as soon as it is
# stored whatever this is; it bounds how long a pull lost with a connection goes unnoticed (+5 s)
FETCH_WAIT = 2.0
# seconds between checkpoint saves while pages keep coming (caught up, it saves at once): a crash
# re-reads at most that much, and nothing it re-reads fires twice (`fire_command_id`)
CHECKPOINT_EVERY = 0.2
POLL = 0.1  # seconds between journal reads while other processes' appends go unseen (`Journal.tail_poll`)
_DEFINITE = {ErrorCode.INVALID, ErrorCode.REJECTED, ErrorCode.UNKNOWN_COMMAND, ErrorCode.UNKNOWN_ENTITY_TYPE}
_fire_encoder = msgspec.json.Encoder()
_fire_decoder = msgspec.json.Decoder(TimerFire)


class Send(Protocol):
    """The command path a firing goes through (the runtime's `ask`, or a NATS request in a cluster)."""

    def __call__(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: bytes,
        *,
        command_id: str,
        causation_id: str,
    ) -> Awaitable[Reply]: ...


def timer_stream_config(prefix: str, settings: StreamSettings) -> api.StreamConfig:
    """Schedules and firings in one work-queue stream: a firing is gone once acknowledged."""
    config = settings.config_for(timer_stream(prefix), timer_subjects(prefix))
    config.retention = api.RetentionPolicy.WORK_QUEUE
    config.max_age = 0.0  # a timer may be a year ahead
    config.allow_msg_schedules = True
    return config


class TimerStats:
    """Counts for the metrics endpoint: relayed schedules and cancels, firings, lateness."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, float("inf"))

    def __init__(self) -> None:
        self.scheduled = 0
        self.cancelled = 0
        self.fired = 0
        self.failed = 0  # firings refused by their target, or parked after retries
        self.late_counts = [0] * len(self.BUCKETS)
        self.late_sum = 0.0

    def observe_lateness(self, seconds: float) -> None:
        self.late_sum += seconds
        for i, bound in enumerate(self.BUCKETS):
            if seconds <= bound:
                self.late_counts[i] += 1
                return


class _Armed(msgspec.Struct):
    """A near timer armed in memory: fired from the heap at its time, retried from here."""

    fire: TimerFire
    position: int  # the journal position of the event that scheduled it
    attempt: int = 1


TimerKey = tuple[str, str, str]  # owner type, owner id, timer name


class TimerRelay:
    """Journal → timers. Near ones fire from memory; far and recurring ones go to JetStream schedules.

    nats-server's scheduler fires a schedule up to a few hundred milliseconds after its time when
    it is busy (measured: p99 about 300 ms at 1,000 schedules/s), too coarse for a workflow's next
    step or a short hold. So a timer due within `horizon` is armed here, in a heap, and fired at
    its time; the checkpoint never passes an armed timer, so after a crash the journal gives it back
    (a second firing has the same command id). A timer further out, or recurring, is handed to a
    JetStream schedule and the checkpoint moves on: nats-server keeps it, across restarts too.
    """

    horizon = 30.0  # seconds
    max_attempts = 10
    concurrency = 256
    _TRACKED = 100_000

    def __init__(
        self,
        journal: Journal,
        nc: NATS,
        *,
        prefix: str,
        send: Send | None = None,
        stats: TimerStats | None = None,
        workflows: Collection[str] = (),
    ) -> None:
        self.journal = journal
        self.workflows = frozenset(workflows)  # entity types whose own events carry their timer (model/workflow.py)
        # what it reads of the journal: timer events of any type, the workflows' own events, and every
        # entity's first event (`_born_here`); on SQL the query selects them, not this loop
        self.selection = Selection(types=self.workflows, names=frozenset((SCHEDULED, CANCELLED)), firsts=True)
        self.js = nc.jetstream()
        self.prefix = prefix
        self.stream = timer_stream(prefix)
        self.send = send
        self.stats = stats or TimerStats()
        self.position = 0  # the last journal position read
        self.clock: Callable[[], int] = time.time_ns
        self.armed: dict[TimerKey, _Armed] = {}
        self._due: list[tuple[int, int, TimerKey]] = []  # (due, generation, key): a heap, stale entries skipped
        self._positions: list[tuple[int, TimerKey, int]] = []  # (position, key, generation): the checkpoint's floor
        self._changed = anyio.Event()
        # Which schedules may be in JetStream: the ones this relay published, and any of an owner whose
        # history did not all pass through it (first seen past seq 1). Cancels of the rest skip the purge.
        self._published: set[TimerKey] = set()
        self._born_here: set[tuple[str, str]] = set()

    async def run(self) -> None:
        self.position = await self.journal.load_checkpoint(CHECKPOINT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fire_armed)
            await self._tail()

    async def _tail(self) -> None:
        retry = Backoff(0.1, cap=5.0)
        saved, saved_at = self.position, time.monotonic()
        while True:
            wake = self.journal.next_append()
            try:
                page = await self.journal.read_selected(self.selection, self.position + 1, limit=1000)
                news = page.through > self.position
                if page.events:
                    await self._relay(page.events)
                self.position = max(self.position, page.through)
                floor = self._floor()
                if floor != saved and (not news or time.monotonic() - saved_at >= CHECKPOINT_EVERY):
                    await self.journal.save_checkpoint(CHECKPOINT, floor)
                    saved, saved_at = floor, time.monotonic()
                retry.reset()
            except Exception as exc:  # noqa: BLE001 - storage or NATS trouble: retried, never fatal
                log.warning("timer relay failed; retrying", position=self.position, error=str(exc))
                await retry.sleep()
                continue
            if not news:
                with anyio.move_on_after(self.journal.tail_poll(POLL)):
                    await wake.wait()

    def _floor(self) -> int:
        """The checkpoint: everything read, except what an armed timer still needs read again after a crash."""
        while self._positions:
            position, key, generation = self._positions[0]
            armed = self.armed.get(key)
            if armed is not None and armed.fire.generation == generation:
                return position - 1
            heapq.heappop(self._positions)
        return self.position

    async def _relay(self, page: list[Envelope]) -> None:
        # Only the last operation per timer in a page matters: a schedule replaced or cancelled
        # before it was ever relayed never fires (as if the relay had been faster).
        last: dict[TimerKey, tuple[Envelope, TimerOp]] = {}
        for env in page:
            if env.seq == 1:
                if len(self._born_here) >= self._TRACKED:  # forget, and be careful again
                    self._born_here.clear()
                    self._published.clear()
                self._born_here.add((env.entity_type, env.entity_id))
            op = timer_op(env, self.workflows)
            if op is not None:
                key = (env.entity_type, env.entity_id, op.name)
                last.pop(key, None)  # keep journal order
                last[key] = (env, op)
        # Most operations are settled in memory (a near timer armed, a cancel of one never handed
        # to JetStream); only the rest need a task each, to talk to JetStream concurrently.
        remote = [(key, env, op) for key, (env, op) in last.items() if not self._apply_here(key, env, op)]
        if not remote:
            return
        async with anyio.create_task_group() as tg:
            for key, env, op in remote:
                tg.start_soon(self._apply, key, env, op)

    def _maybe_published(self, key: TimerKey) -> bool:
        return key in self._published or key[:2] not in self._born_here

    def _apply_here(self, key: TimerKey, env: Envelope, op: TimerOp) -> bool:
        """Apply an operation that JetStream has no part in; False: `_apply` must."""
        if self._maybe_published(key):
            return False
        self.armed.pop(key, None)
        if not isinstance(op, TimerScheduled):
            self.stats.cancelled += 1
            return True
        if op.every != 0 or op.due - self.clock() > self.horizon * 1e9 or self.send is None:
            return False
        self.stats.scheduled += 1
        self._arm(key, env, op)
        return True

    def _arm(self, key: TimerKey, env: Envelope, op: TimerScheduled) -> None:
        self.armed[key] = _Armed(self._fire(key, env, op), env.position)
        heapq.heappush(self._due, (op.due, env.seq, key))
        heapq.heappush(self._positions, (env.position, key, env.seq))
        self._changed.set()

    @staticmethod
    def _fire(key: TimerKey, env: Envelope, op: TimerScheduled) -> TimerFire:
        return TimerFire(
            owner_type=env.entity_type,
            owner_id=env.entity_id,
            name=op.name,
            generation=env.seq,
            due=op.due,
            to_type=op.to_type,
            to_id=op.to_id,
            command=op.command,
            args=op.args,
            every=op.every,
        )

    async def _apply(self, key: TimerKey, env: Envelope, op: TimerOp) -> None:
        self.armed.pop(key, None)
        if not isinstance(op, TimerScheduled):
            self.stats.cancelled += 1
            if self._maybe_published(key):
                # The schedule, and a firing of it not yet delivered. (A schedule never purges the
                # firing subject: re-relayed after a crash, it would drop a firing of itself.)
                await self.js.purge_stream(self.stream, subject=schedule_subject(self.prefix, *key))
                await self.js.purge_stream(self.stream, subject=fire_subject(self.prefix, *key))
                self._published.discard(key)
            return
        fire = self._fire(key, env, op)
        self.stats.scheduled += 1
        near = op.every == 0 and op.due - self.clock() <= self.horizon * 1e9
        if near and self.send is not None and not self._maybe_published(key):
            self._arm(key, env, op)
            return
        headers = {
            H_SCHEDULE: schedule_header(op.due, op.every),
            H_SCHEDULE_TARGET: fire_subject(self.prefix, *key),
            H_GENERATION: str(env.seq),
            "Nats-Msg-Id": f"timer/{env.key}",
        }
        await self.js.publish(
            schedule_subject(self.prefix, *key), _fire_encoder.encode(fire), stream=self.stream, headers=headers
        )
        self._published.add(key)

    async def _fire_armed(self) -> None:
        """Fire armed timers at their time, never before; bounded concurrency; retried with backoff."""
        slots = anyio.Semaphore(self.concurrency)
        async with anyio.create_task_group() as tg:
            while True:
                now = self.clock()
                while self._due and self._due[0][0] <= now:
                    _, generation, key = heapq.heappop(self._due)
                    armed = self.armed.get(key)
                    if armed is None or armed.fire.generation != generation:
                        continue  # replaced or cancelled since
                    await slots.acquire()
                    tg.start_soon(self._fire_one, key, armed, slots)
                self._changed = anyio.Event()
                # nothing armed: nothing to fire until `_arm` or a retry sets `_changed`
                wait = (self._due[0][0] - self.clock()) / 1e9 if self._due else self.horizon
                with anyio.move_on_after(max(wait, 0.0)):
                    await self._changed.wait()

    async def _fire_one(self, key: TimerKey, armed: _Armed, slots: anyio.Semaphore) -> None:
        try:
            assert self.send is not None
            outcome = await deliver(self.send, armed.fire, None, armed.attempt, self.max_attempts)
            if outcome == RETRY:
                delay = Backoff(TimerFirer.backoff).at(armed.attempt)
                armed.attempt += 1
                if self.armed.get(key) is armed:
                    heapq.heappush(self._due, (self.clock() + int(delay * 1e9), armed.fire.generation, key))
                    self._changed.set()
                return
            if outcome == FIRED:
                self.stats.fired += 1
                self.stats.observe_lateness(max(0, self.clock() - armed.fire.due) / 1e9)
            else:
                self.stats.failed += 1
                await park(self.js, self.prefix, _fire_encoder.encode(armed.fire), "armed timer", outcome)
            if self.armed.get(key) is armed:
                del self.armed[key]
        finally:
            slots.release()


FIRED, RETRY = "fired", "retry"


async def deliver(send: Send, fire: TimerFire, firing: int | None, attempt: int, max_attempts: int) -> str:
    """Send a timer's command with its derived id: FIRED, RETRY, or the refusal to park."""
    if tracing.tracer() is None:
        return await _deliver(send, fire, firing, attempt, max_attempts)
    attributes = {"memoir.timer": f"{fire.owner_type}/{fire.owner_id}/{fire.name}", "memoir.attempt": attempt}
    with tracing.span(f"fire {fire.owner_type}.{fire.name}", kind=tracing.CONSUMER, attributes=attributes) as span:
        outcome = await _deliver(send, fire, firing, attempt, max_attempts)
        tracing.set_outcome(span, "ok" if outcome == FIRED else "retry" if outcome == RETRY else "refused")
        return outcome


async def _deliver(send: Send, fire: TimerFire, firing: int | None, attempt: int, max_attempts: int) -> str:
    cid = fire_command_id(fire.owner_type, fire.owner_id, fire.name, fire.generation, firing)
    try:
        await send(
            fire.to_type,
            fire.to_id,
            fire.command,
            bytes(fire.args),
            command_id=cid,
            causation_id=f"timer:{fire.owner_type}/{fire.owner_id}/{fire.name}",
        )
    except CommandError as exc:
        if exc.code in _DEFINITE or attempt >= max_attempts:
            return str(exc)
        return RETRY
    return FIRED


async def park(js: Any, prefix: str, data: bytes, subject: str, reason: str) -> None:
    """A firing its target refuses is kept on `{prefix}.deadletter.timers`."""
    log.error("timer firing refused; parked on the dead-letter subject", timer=subject, error=reason)
    headers = {"Memoir-Error": " ".join(reason.split())[:1000], "Memoir-Original-Subject": subject}
    await js.publish(dead_letter_subject(prefix, "timers"), data, headers=headers)


class TimerFirer:
    """Firings → commands, each with its derived command id; acknowledged once answered."""

    max_attempts = 10
    backoff = 0.2  # seconds before the first retry of a firing whose command could not run; doubles
    concurrency = 256

    def __init__(self, nc: NATS, send: Send, *, prefix: str, stats: TimerStats | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.send = send
        self.prefix = prefix
        self.stream = timer_stream(prefix)
        self.stats = stats or TimerStats()
        self.clock: Callable[[], int] = time.time_ns

    async def run(self) -> None:
        config = api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,  # kept alive with in-progress acks while a command runs
            max_ack_pending=10_000,
            filter_subject=f"{self.prefix}.timers.fire.>",
        )
        try:
            await self.js.consumer_info(self.stream, DURABLE)
        except NotFoundError:
            await self.js.add_consumer(self.stream, config=config)
        puller = Puller(self.nc, self.stream, DURABLE)
        await puller.start()
        slots = anyio.Semaphore(self.concurrency)
        try:
            async with anyio.create_task_group() as tg:
                retry = Backoff(0.1, cap=5.0)
                while True:
                    try:
                        msgs = await puller.fetch(self.concurrency, FETCH_WAIT)
                    except (NatsError, JetStreamError) as exc:
                        log.warning("timer fetch failed", error=str(exc))
                        await retry.sleep()
                        continue
                    retry.reset()
                    for msg in msgs:
                        await slots.acquire()
                        tg.start_soon(self._fire_and_release, msg, slots)
        finally:
            with anyio.CancelScope(shield=True):
                await puller.stop()  # unacknowledged firings come back after ack_wait

    async def _fire_and_release(self, msg: Msg, slots: anyio.Semaphore) -> None:
        try:
            await self._fire(msg)
        finally:
            slots.release()

    async def _fire(self, msg: Msg) -> None:
        try:
            fire = _fire_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:  # not ours; never retried
            self.stats.failed += 1
            await park(self.js, self.prefix, msg.data, msg.subject, f"not a timer firing: {exc}")
            await msg.ack()
            return
        early = fire.due - self.clock()
        if early > 0:  # never before its time, whatever the server's clock says
            await anyio.sleep(early / 1e9)
        firing = stream_sequence(msg) if fire.every else None
        attempt = msg.metadata.num_delivered or 1
        async with _keep_alive(msg):
            outcome = await deliver(self.send, fire, firing, attempt, self.max_attempts)
        if outcome == RETRY:
            await msg.nak(delay=Backoff(self.backoff).at(attempt))
            return
        if outcome == FIRED:
            self.stats.fired += 1
            if not fire.every:
                self.stats.observe_lateness(max(0, self.clock() - fire.due) / 1e9)
        else:
            self.stats.failed += 1
            await park(self.js, self.prefix, msg.data, msg.subject, outcome)
        await msg.ack()


@contextlib.asynccontextmanager
async def _keep_alive(msg: Msg, every: float = ACK_WAIT / 3) -> Any:
    """Tell the server the firing is being worked on, so a long command is not redelivered meanwhile."""
    async with anyio.create_task_group() as tg:

        async def beat() -> None:
            while True:
                await anyio.sleep(every)
                with contextlib.suppress(NatsError, JetStreamError):
                    await msg.in_progress()

        tg.start_soon(beat)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def timer_op(env: Envelope, workflows: Collection[str] = ()) -> TimerOp | None:
    """The timer operation a stored event holds: a timer event's, or a workflow event's own timer."""
    if env.name in (SCHEDULED, CANCELLED):
        return decode_op(env.name, env.payload)
    if env.entity_type in workflows:
        return wake_op(env.entity_type, env.entity_id, env.name, env.payload)
    return None


async def entity_timers(
    journal: Journal, entity_type: str, entity_id: str, *, workflow: bool = False
) -> dict[str, PendingTimer]:
    """An entity's timers as its history leaves them: the latest schedule per name, not cancelled."""
    timers: dict[str, PendingTimer] = {}
    from_seq = 1
    workflows = (entity_type,) if workflow else ()
    while True:
        page = await journal.read(entity_type, entity_id, from_seq=from_seq, limit=1000)
        for env in page:
            op = timer_op(env, workflows)
            if op is not None:
                fold_op(timers, op, env.seq, env.position)
        if len(page) < 1000:
            return timers
        from_seq = page[-1].seq + 1


async def pending_timers(
    journal: Journal, nc: NATS, *, prefix: str, entity_type: str, entity_id: str, workflow: bool = False
) -> list[PendingTimer]:
    """The entity's timers that have not fired yet, by due time.

    A timer is pending while its schedule is in the stream, or while the relay has not reached
    it yet; a one-shot schedule leaves the stream when it fires.
    """
    js = nc.jetstream()
    relayed = await journal.load_checkpoint(CHECKPOINT)
    out = []
    for timer in (await entity_timers(journal, entity_type, entity_id, workflow=workflow)).values():
        if timer.position > relayed:
            out.append(timer)
            continue
        try:
            msg = await js.get_last_msg(
                timer_stream(prefix), schedule_subject(prefix, entity_type, entity_id, timer.name)
            )
        except NotFoundError:
            continue
        if (msg.headers or {}).get(H_GENERATION) == str(timer.generation):
            out.append(timer)
    return sorted(out, key=lambda t: t.due)


def ask_sender(ask: Callable[..., Awaitable[Reply]]) -> Send:
    """A `Send` over `Runtime.ask` (one process owns every entity)."""

    def send(
        entity_type: str, entity_id: str, command: str, args: bytes, *, command_id: str, causation_id: str
    ) -> Awaitable[Reply]:
        return ask(entity_type, entity_id, command, args, command_id=command_id, causation_id=causation_id)

    return send
