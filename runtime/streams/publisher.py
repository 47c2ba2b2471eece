"""The outbox publisher: the journal, tailed by position, onto one JetStream stream per entity type.

It reads the journal from a checkpoint kept in the journal's own store and
publishes each event with `Nats-Msg-Id = {type}/{id}/{seq}`. Publishing is
pipelined: up to `window` messages are in flight, also across reads of the
journal, and acks are settled in order, so the checkpoint only ever moves past
acknowledged messages. A crash
between append and publish re-publishes from the checkpoint, and JetStream
drops what it already has:

- inside the stream's duplicate window, by `Nats-Msg-Id`;
- beyond it, because on start the publisher reads the `Memoir-Position` of
  each stream's last message and skips events at or below it (a stream
  receives its messages in order, so everything below is there).

Order is the server's to keep, not the connection's. nats-py buffers what is
published while it reconnects and sends it first thing on the new connection,
so after a server restart a message can land while one published before it was
lost with the old socket. So each message names the stream's last sequence it
must follow (`Nats-Expected-Last-Sequence`), as the publisher predicts it: what
the stream said on start, plus every message sent to it since. The server
refuses anything that does not follow on exactly, the publisher goes back to its
checkpoint, asks each stream for its last message again, and carries on from there.

A stream's share of one read of the journal goes out as one JetStream atomic batch
(`allow_atomic`, nats-server 2.12+; ADR-50) once it holds `ATOMIC_FROM` (256) events:
`Nats-Batch-Id`, `Nats-Batch-Sequence`, `Nats-Batch-Commit` on the last, one ack for
the batch instead of one per event, all stored or none, in order; its first message
carries the expectation. Fewer go as plain messages: a consumer waiting at the tail sees
an atomic batch some milliseconds later than plain messages (measured on 2.15: 5-10
ms against 1-2), which at 5,000 events/s took the append-to-view lag p99 from 26 to
240 ms; so a publisher keeping up sends plain messages, and one catching up, whose
reads are long, sends batches. A batch holding a message id the stream already has is refused
whole (10201: it is not deduplicated message by message), and like any refusal
sends the publisher back to its checkpoint, where the streams' last messages say
what to skip. A stream without atomic batches (an older server, or
`StreamSettings(atomic=False)`) gets plain messages only.

Plain messages go as a chain with one ack: every message names the sequence it must
follow, and only the last asks for an answer. The server refuses a message that does not
follow on exactly, so a refusal anywhere in the chain (or a message lost on the way)
leaves every later expectation wrong: the last one is refused too, and its answer says
so. An ack for the last therefore stands for the whole chain, and an event at the tail
costs one message to the server instead of two. Every ack is also held to the stream
sequence the publisher predicted for its message: a replicated stream checks expectations
when a message is proposed, so one that fails later, as it is applied, could leave a gap
behind a stored successor; the sequence shows it. (An ack saying "duplicate" answers for
its own message only: for a chain, the publisher goes back to its checkpoint as after a
refusal.)

So every acknowledged event reaches its stream exactly once, in per-entity order.
(Two publishers on one journal take turns rather than interleave: each refusal
sends the loser back to its checkpoint, where it finds the events already there.)

Partitions: `Publisher(..., only=type)` publishes one entity type's events and keeps a
checkpoint of its own (`publisher.{type}`); a service runs one per type (`Publishers`), each a
singleton of its own in a cluster, so the publishing spreads over the members. By stream, not by
shard range: each stream then keeps exactly one writer, so the expectation above (the stream's
last sequence, one ack per chain or atomic batch) stays exact. A partition by shard range would
have several writers per stream, so each message could only name its subject's last sequence
(`Nats-Expected-Last-Subject-Sequence`) and would need an ack of its own, and atomic batches
(one stream, one writer) would be gone. A partition reads its type's events only
(`Journal.read_types`: on SQL, by an index on type and position), so N partitions read the journal
once between them, not N times; each read says how far it looked (`Page.through`), past the other
types' events, and that is where the partition's checkpoint goes once what it sent is acknowledged:
every event of its type at or below it is in its stream. A partition that has no checkpoint yet
starts from the whole-journal one (`memoir.publisher`, an upgrade), and any partition starts from
the later of the two, which are both safe: everything at or below either is in its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from ..journal import Journal
from ..journal.base import Page
from ..model.backoff import Backoff
from ..model.envelope import Envelope
from ..model.errors import JournalError, MemoirError
from ..wire import tracing
from ..wire.nats import AckInbox, PublishError, check_ack, watch
from ..wire.nats import ensure_stream as ensure_stream_with
from ..wire.protocol import H_MSG_ID, H_POSITION, event_headers, event_subject, events_filter, stream_name

log = structlog.get_logger("memoir.publisher")

CHECKPOINT = "memoir.publisher"
CHECKPOINT_SYNCED = "memoir.publisher.synced"  # a checkpoint at least one stream sync interval old
IDLE_CHECKPOINT_S = 5.0  # a partition whose type had no events since its last save stores its place this rarely
H_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
H_BATCH_ID = "Nats-Batch-Id"
H_BATCH_SEQ = "Nats-Batch-Sequence"
H_BATCH_COMMIT = "Nats-Batch-Commit"
MAX_ATOMIC = 1000  # messages in one atomic batch: the server's `max_msgs` default
ATOMIC_FROM = 256  # a stream's events in one read from which it goes as an atomic batch: a catch-up


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the per-type event streams are created (and updated at start-up)."""

    storage: str = "file"  # or "memory"
    replicas: int = 1  # 3 on a cluster
    duplicate_window: float = 120.0  # seconds
    max_age: float = 0.0  # 0: keep forever; the journal is the source of truth either way
    atomic: bool = True  # atomic batch publish where the server has it (2.12+); else message by message
    # appended to each `Nats-Msg-Id`: a region's `@{region}`, so a replica sourcing several regions'
    # streams never dedupes one region's event against another's of the same seq (regions/replication.py)
    msg_id_suffix: str = ""

    def config(self, prefix: str, entity_type: str) -> api.StreamConfig:
        return self.config_for(stream_name(prefix, entity_type), [events_filter(prefix, entity_type)])

    def config_for(self, name: str, subjects: list[str]) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType(self.storage),
            num_replicas=self.replicas,
            retention=api.RetentionPolicy.LIMITS,
            duplicate_window=self.duplicate_window,
            max_age=self.max_age,
            allow_atomic=self.atomic or None,  # None: leave it out, for servers that do not know it
        )


async def ensure_stream(js: Any, prefix: str, entity_type: str, settings: StreamSettings) -> None:
    """Create or update an entity type's event stream (see `wire.nats.ensure_stream`)."""
    await ensure_stream_with(js, settings.config(prefix, entity_type))


ensure_stream_config = ensure_stream_with  # the name consumers and older callers use


def _connection_lost() -> Exception:
    return PublishError("connection lost")


_RETRYABLE = (PublishError, NatsError, JetStreamError, TimeoutError, MemoirError)


class _Sent:
    """One read of the journal in flight: how far it looked, and the acks that must all be in
    before the checkpoint may pass it, each with how many messages it answers for and the stream
    sequence its message must have been stored at."""

    __slots__ = ("acks", "messages", "position")

    def __init__(self, position: int) -> None:
        self.position = position
        self.acks: list[tuple[asyncio.Future[Msg], int, int]] = []
        self.messages = 0

    def done(self) -> bool:
        return all(fut.done() for fut, _, _ in self.acks)


_Inflight = deque[_Sent]


def partition_name(entity_type: str) -> str:
    """The singleton and the checkpoint of the partition publishing `entity_type`'s events."""
    return f"publisher.{entity_type}"


class Publisher:
    """Run with `tg.start_soon(publisher.run)`; stop by cancelling, or `flush()` then cancel."""

    def __init__(
        self,
        journal: Journal,
        nc: NATS,
        *,
        prefix: str = "memoir",
        entity_types: Iterable[str] = (),
        settings: StreamSettings | None = None,
        batch_size: int = 1000,
        window: int = 4096,
        poll_interval: float = 0.25,
        ack_timeout: float = 5.0,
        stream_sync_interval: float = 120.0,
        checkpoint_interval: float = 0.2,
        only: str | None = None,
    ) -> None:
        """`only`: publish that entity type's events alone, from a checkpoint of its own (a partition)."""
        self.journal = journal
        self.nc = nc
        self.js = nc.jetstream()
        self.prefix = prefix
        self.settings = settings or StreamSettings()
        self.batch_size = batch_size
        self.window = window
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self.stream_sync_interval = stream_sync_interval
        self.checkpoint_interval = checkpoint_interval
        self._saved = 0
        self._saved_at = 0.0
        self.checkpoint = 0
        self.published = 0
        self.only = only
        self._types = set(entity_types) if only is None else {only}
        self._checkpoint_name = CHECKPOINT if only is None else partition_name(only)
        self._own_since_save = False  # a partition published events of its type since its last save
        self._ready: set[str] = set()
        self._high_water: dict[str, int] = {}
        self._last_seq: dict[str, int] = {}  # per type: its stream's last sequence once what was sent is stored
        self._atomic: set[str] = set()  # types whose stream takes atomic batches
        self._batch_prefix = secrets.token_hex(6)
        self._batches = 0
        self._messages_in_flight = 0

    async def _prepare(self, entity_type: str) -> None:
        """Create or update the type's stream and learn its last sequence and last message's position."""
        if entity_type in self._ready:
            return
        await ensure_stream(self.js, self.prefix, entity_type, self.settings)
        name = stream_name(self.prefix, entity_type)
        info = await self.js.stream_info(name)
        self._high_water.pop(entity_type, None)
        self._last_seq[entity_type] = info.state.last_seq
        if info.config.allow_atomic:
            self._atomic.add(entity_type)
        else:
            self._atomic.discard(entity_type)
        if info.state.last_seq:
            try:
                last = await self.js.get_msg(name, seq=info.state.last_seq)
            except NotFoundError:
                pass
            else:
                headers = last.headers or {}
                self._high_water[entity_type] = int(headers.get(H_POSITION, 0))
        self._ready.add(entity_type)

    async def _load_checkpoints(self) -> tuple[int, int]:
        """(checkpoint, synced checkpoint); a partition's are at least the whole journal's (see the docstring)."""
        saved = await self.journal.load_checkpoint(self._checkpoint_name)
        synced = await self.journal.load_checkpoint(f"{self._checkpoint_name}.synced")
        if self.only is not None:
            saved = max(saved, await self.journal.load_checkpoint(CHECKPOINT))
            synced = max(synced, await self.journal.load_checkpoint(CHECKPOINT_SYNCED))
        return saved, synced

    async def run(self) -> None:
        # A stream's server fsyncs every `stream_sync_interval`: after a machine crash it may have lost
        # what it acknowledged since. So start from the checkpoint that is at least that old; the
        # streams' high-water marks skip whatever did survive.
        self.checkpoint, resume = await self._load_checkpoints()
        self._saved = self.checkpoint
        sample = (time.monotonic(), self.checkpoint)
        self.checkpoint = min(resume, self.checkpoint)
        acks = AckInbox(self.nc, _connection_lost)
        await acks.open()
        back = anyio.Event()  # set when a lost connection is back: no need to sit out the backoff

        def reconnected() -> None:
            back.set()

        unwatch = watch(self.nc, reconnected=reconnected)
        # (position, ack or None for an event its stream already holds), oldest first. It outlives
        # each batch, so the window stays full from one read of the journal to the next.
        inflight: _Inflight = deque()
        following = self.checkpoint + 1  # the next position to read: ahead of the checkpoint by `inflight`
        retry = Backoff(0.1, cap=5.0)
        try:
            for t in sorted(self._types):
                await self._prepare(t)
            page: Page | None = None  # read ahead: the next to publish
            while True:
                try:
                    if page is None:
                        news = self.journal.next_append()
                        page = await self._read(following)
                        if page.through < following:  # nothing new
                            page = None
                            with anyio.fail_after(self.ack_timeout):
                                await self._settle(inflight, all_=True)
                            await self._save_checkpoint(force=True)  # caught up: store where we are
                            with anyio.move_on_after(self.journal.tail_poll(self.poll_interval)):
                                await news.wait()
                            continue
                    following = page.through + 1
                    if not inflight and not page.events:  # a partition's read that passed other types' events
                        self.checkpoint, page = page.through, None
                        await self._save_checkpoint()
                        continue  # and reads on: only a read that looked no further is the tail
                    page = await self._publish_and_prefetch(acks, inflight, page)
                    retry.reset()
                except _RETRYABLE as exc:
                    delay = retry.next()
                    log.warning(
                        "publish failed; retrying from the checkpoint",
                        error=str(exc),
                        checkpoint=self.checkpoint,
                        retry_in=delay,
                    )
                    page = None
                    inflight.clear()  # their acks no longer count: everything after the checkpoint goes again
                    self._messages_in_flight = 0
                    following = self.checkpoint + 1
                    self._ready.clear()  # and each stream is asked again what it holds
                    with anyio.move_on_after(delay):
                        await back.wait()
                    if back.is_set():
                        back = anyio.Event()
                        retry.reset()
                if time.monotonic() - sample[0] >= self.stream_sync_interval:
                    await self.journal.save_checkpoint(f"{self._checkpoint_name}.synced", sample[1])
                    sample = (time.monotonic(), self.checkpoint)
        finally:
            unwatch()
            with anyio.CancelScope(shield=True):
                await acks.close()
                await self._save_checkpoint(force=True, final=True)

    async def _read(self, start: int, limit: int | None = None) -> Page:
        """The journal from `start`: a partition's type's events only, the whole publisher's all of them."""
        limit = self.batch_size if limit is None else limit
        if self.only is not None:
            return await self.journal.read_types((self.only,), start, limit)
        events = await self.journal.read_all(start, limit)
        return Page(events, events[-1].position if events else start - 1)

    async def _publish_and_prefetch(self, acks: AckInbox, inflight: _Inflight, page: Page) -> Page | None:
        """Publish one read while the next is read from the journal; returns the next read.

        Only a full read has a next one to prefetch: a short one came from the tail, whose next
        events are not written yet, and asking the store for them is a thread hop and a query
        (a tenth of the process's time under a steady command load) to learn that. The main loop
        reads on from the journal's memory once they are appended.
        """
        nxt: list[Page] = []
        failure: Exception | None = None
        batch = page.events

        async def prefetch() -> None:
            with contextlib.suppress(JournalError):  # the main loop re-reads and reports it
                nxt.append(await self._read(page.through + 1))

        async with anyio.create_task_group() as tg:
            if len(batch) >= self.batch_size:
                tg.start_soon(prefetch)
            try:
                # One deadline per batch, not per message: a timer per event costs more than the event.
                with anyio.fail_after(self.ack_timeout + len(batch) / 1000):
                    if tracing.tracer() is None or not batch:
                        await self._publish(acks, inflight, page)
                    else:
                        with _span(batch):
                            await self._publish(acks, inflight, page)
            except _RETRYABLE as exc:
                failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return nxt[0] if nxt and nxt[0].through > page.through else None

    async def _publish(self, acks: AckInbox, inflight: _Inflight, page: Page) -> None:
        """Send one read of the journal: per stream, atomic batches or message by message."""
        try:
            groups: dict[str, list[Envelope]] = {}
            for env in page.events:
                if env.entity_type not in self._ready:
                    await self._prepare(env.entity_type)
                if env.position > self._high_water.get(env.entity_type, 0):  # else already in its stream
                    groups.setdefault(env.entity_type, []).append(env)
            sent = _Sent(page.through)
            sent.messages = sum(len(g) for g in groups.values())
            # The window counts messages, not batches: each batch is committed as soon as it is sent,
            # so none stays open on the server (which holds at most 50 per stream), however many wait
            # for their ack. A cap on batches would tie a publisher at the tail, whose reads are
            # small, to the ack's round trip.
            while inflight and self._messages_in_flight + sent.messages > self.window:
                await self._settle(inflight)
            for entity_type, envs in groups.items():
                atomic = entity_type in self._atomic and len(envs) >= ATOMIC_FROM
                for i in range(0, len(envs), MAX_ATOMIC):
                    part = envs[i : i + MAX_ATOMIC]
                    fut = await self._send(acks, entity_type, part, atomic=atomic)
                    sent.acks.append((fut, len(part), self._last_seq[entity_type]))
            inflight.append(sent)
            self._messages_in_flight += sent.messages
            await self._settle(inflight, ready_only=True)
        finally:
            await self._save_checkpoint()

    async def _send(
        self, acks: AckInbox, entity_type: str, envs: list[Envelope], *, atomic: bool
    ) -> asyncio.Future[Msg]:
        """A stream's messages in one write, only the last with an ack: an atomic batch, whose first
        message names the stream's last sequence, or a chain, each of whose messages names the one
        it follows, so the last one's ack answers for all (see the module docstring)."""
        first = self._last_seq[entity_type]
        if atomic:
            self._batches += 1
            batch_id = f"{self._batch_prefix}{self._batches}"
        messages = []
        for n, env in enumerate(envs):
            headers = event_headers(env)
            if self.settings.msg_id_suffix:
                headers[H_MSG_ID] += self.settings.msg_id_suffix
            if atomic:
                headers[H_BATCH_ID] = batch_id
                headers[H_BATCH_SEQ] = str(n + 1)
            if n == 0 or not atomic:
                headers[H_EXPECTED_LAST_SEQ] = str(first + n)
            messages.append((event_subject(self.prefix, entity_type, env.entity_id), env.payload, headers))
        if atomic:
            messages[-1][2][H_BATCH_COMMIT] = "1"
        fut = await acks.publish_batch(messages)
        self._last_seq[entity_type] = first + len(envs)
        return fut

    async def _settle(self, inflight: _Inflight, *, all_: bool = False, ready_only: bool = False) -> None:
        """Move the checkpoint past acknowledged reads, in order: the oldest one (waiting for its
        acks), every one (`all_`), or those whose acks are all here already (`ready_only`)."""
        while inflight:
            sent = inflight[0]
            if ready_only and not sent.done():
                return
            for fut, count, due in sent.acks:
                ack = check_ack(await fut)
                if ack.get("duplicate"):  # it answers for its own message only, stored before
                    if count > 1:
                        raise PublishError("the last message of a chain was a duplicate: the stream is asked again")
                elif ack.get("seq") != due:  # a message before it is missing (a clustered stream can
                    # let a later one through when an earlier one fails as it is applied)
                    raise PublishError(f"stored at stream sequence {ack.get('seq')}, {due} was due: asked again")
                self.published += count
                self._own_since_save = True
            inflight.popleft()
            self._messages_in_flight -= sent.messages
            self.checkpoint = sent.position
            if not (all_ or ready_only):
                return

    async def _save_checkpoint(self, *, force: bool = False, final: bool = False) -> None:
        """Store the checkpoint at most every `checkpoint_interval` seconds: each save waits for a
        journal write, and a crash re-publishes at most that much (which JetStream then drops).

        A partition that only skipped other types' events since its last save stores its place
        every IDLE_CHECKPOINT_S, even when it catches up: a restart then re-reads a few seconds of
        the journal and publishes none of it, where saving each catch-up would cost a journal
        write per partition per append."""
        now = time.monotonic()
        if self.checkpoint == self._saved or (not force and now - self._saved_at < self.checkpoint_interval):
            return
        idle = self.only is not None and not self._own_since_save
        if idle and not final and now - self._saved_at < IDLE_CHECKPOINT_S:
            return
        with anyio.CancelScope(shield=True):
            await self.journal.save_checkpoint(self._checkpoint_name, self.checkpoint)
        self._saved, self._saved_at = self.checkpoint, now
        self._own_since_save = False

    async def lag(self) -> int:
        """How many positions the stream is behind the journal."""
        return await self.journal.last_position() - self.checkpoint

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything appended so far is published (for a graceful shutdown)."""
        with anyio.fail_after(timeout):
            while (await self._read(self.checkpoint + 1, limit=1)).events:
                await anyio.sleep(0.01)


class Publishers:
    """A service's publisher partitions, one per entity type, seen as the one publisher that callers
    (flush on shutdown, the lag metric, the test waits) know. `runs(name)` says whether this process
    runs the partition `name` now (in a cluster, another member may): only those are flushed and
    measured here."""

    def __init__(self, partitions: dict[str, Publisher], runs: Callable[[str], bool] | None = None) -> None:
        self.partitions = partitions
        self._runs = runs

    def here(self) -> list[Publisher]:
        runs = self._runs
        return [p for t, p in sorted(self.partitions.items()) if runs is None or runs(partition_name(t))]

    @property
    def checkpoint(self) -> int:
        """The lowest partition's checkpoint: every event at or below it is published."""
        return min((p.checkpoint for p in self.partitions.values()), default=0)

    @property
    def published(self) -> int:
        return sum(p.published for p in self.partitions.values())

    async def lag(self) -> int:
        """The most positions a partition running here is behind the journal (0 when none runs here)."""
        return max([await p.lag() for p in self.here()], default=0)

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the partitions running here have published everything appended so far."""
        with anyio.fail_after(timeout):
            for p in self.here():
                await p.flush(timeout)


def _span(batch: list[Envelope]) -> contextlib.AbstractContextManager[Any]:
    """A traced publish: one span per read of the journal, linked to each event's trace (at most 128)."""
    links = [link for env in batch[:128] if (link := tracing.event_link(env.correlation_id, env.key)) is not None]
    if not links:  # no recorded trace wants it (at 1 %, most reads): no span, not even a root of its own
        return contextlib.nullcontext()
    attributes = {"memoir.events": len(batch), "memoir.from_position": batch[0].position}
    return tracing.span("publish", kind=tracing.PRODUCER, attributes=attributes, links=links)
