"""Views: read models kept up to date from entity streams, queryable by key and by declared fields.

```python
class AuthorPosts(msgspec.Struct):
    author: str
    posts: int = 0

class PostsByAuthor(View[AuthorPosts], name="posts_by_author", sources=[Post]):
    @on
    def published(self, rows: Rows[AuthorPosts], e: Published) -> None:
        row = rows.get(e.author) or AuthorPosts(e.author)
        rows.put(e.author, msgspec.structs.replace(row, posts=row.posts + 1))
```

A view declares the fields it is queried by, `indexes=["author", ("region", "posts")]` (fields
of its row, checked when the class is made); `ViewQuery.query` filters, sorts and pages by them,
and `ViewQuery.live` follows a query's result (`query`, `query_live`).

Each view is a durable JetStream consumer per source stream. A batch of events
is applied in one store transaction together with the view's checkpoint, so
every event's effect lands exactly once even when JetStream redelivers; on
start the consumer is recreated at the position after that checkpoint, so the
view's own store, not the server's ack state, decides where it resumes. A view
added later starts at the beginning of its streams, so history flows into the
new feature; `rebuild` drops the rows and does it again.

Catch-up: a view whose service has the journal and that is far behind (new,
rebuilt, after downtime) first reads the journal by position in big pages, each
read while the one before is stored and the pages that waited stored together
(fewer, bigger transactions: cheaper index pages), then follows its streams
from where that read ended. The
journal position, which each stream message carries, is what both paths
checkpoint and check, so the hand-over applies each event once (`ViewRunner`). A big catch-up
into no rows (new, rebuilt) builds the view's indexes once at its end, not row by row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import anyio
import msgspec
import structlog
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from ..engine.keyring import KeyRing
from ..journal.base import Journal
from ..model.backoff import Backoff
from ..model.envelope import Envelope
from ..model.errors import ConfigError, EventDecodeError, JournalError, SealError, Unavailable
from ..model.events import spec_of
from ..model.sealing import Forgotten, is_sealed
from ..wire import tracing
from ..wire.protocol import (
    H_CORRELATION_ID,
    H_EVENT,
    H_POSITION,
    H_RECORDED,
    H_SEQ,
    H_VERSION,
    envelope_from_message,
)
from ._pull import delete_durable, first_above, stream_sequence
from ._runner import StreamResolver, StreamRunner, sole_error
from .handlers import Handler, HandlerTable, Subscriber
from .query import Field, Index, IndexDecl, Page, Query, QueryError, Where, declared_fields, encode_token, plan
from .query_live import VERSION, Batch, Changes, Event, live
from .query_text import parse_where
from .view_store import RawRows, ViewStore

R = TypeVar("R")

_REBUILD_ON_FAILURE_S = 30.0  # how long a failed catch-up may build the indexes it suspended (then: the next start)
FORGOTTEN = spec_of(Forgotten).name  # the event a forget appends: the view scrubs after it
log = structlog.get_logger("memoir.view")

ToApply = tuple[Handler, msgspec.Struct, Envelope | None]
"""One event to apply: its handler, the event, its envelope (None on the fast path: nobody reads it)."""


class _Page(NamedTuple):
    """A catch-up page, read and decoded."""

    work: list[ToApply]
    checkpoints: dict[str, int]  # the position checkpoints once it is applied
    newest: int  # the recorded time of its newest event
    read: int  # events read (applied or not)
    last: int  # its last position


PlainEvent = tuple[str, int, Callable[[bytes], Any], Handler | None]
"""An event of a plain type on the fast path: its current version (as the header writes it, and as
a number), its payload decoder, and the view's handler (None: the view does not handle it)."""


def plain_events(table: HandlerTable) -> dict[str, dict[str, PlainEvent]]:
    """The fast path's table: for each source type that is not encrypted (known from its model, so
    no payload of it needs a key), stored event name -> `PlainEvent`."""
    out: dict[str, dict[str, PlainEvent]] = {}
    for entity_type, model in table.sources.items():
        if model.encrypted:
            continue
        names: dict[str, PlainEvent] = {}
        for name, (cls, version, decode) in model.codec.decoders().items():
            names[name] = (str(version), version, decode, table.handlers.get(cls))
        out[entity_type] = names
    return out


class Rows(Generic[R]):
    """A view's rows inside one batch: reads see the batch's own writes.

    A row put back as it was read (or deleted when it was not there) is not written: the store and
    its indexes are left alone, and live queries see no change."""

    def __init__(self, raw: RawRows, decoder: msgspec.json.Decoder[R], encoder: msgspec.json.Encoder) -> None:
        self._raw = raw
        self._decoder = decoder
        self._encoder = encoder
        self._cache: dict[str, R | None] = {}
        self._dirty: set[str] = set()
        self._stored: dict[str, bytes | None] = {}  # the bytes of each row read from the store

    def get(self, key: str) -> R | None:
        if key not in self._cache:
            data = self._raw.get(key)
            self._stored[key] = data
            self._cache[key] = None if data is None else self._decoder.decode(data)
        return self._cache[key]

    def put(self, key: str, row: R) -> None:
        self._cache[key] = row
        self._dirty.add(key)

    def delete(self, key: str) -> None:
        self._cache[key] = None
        self._dirty.add(key)

    def writes(self) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        stored = self._stored
        for key in self._dirty:
            row = self._cache[key]
            data = None if row is None else self._encoder.encode(row)
            if key not in stored or stored[key] != data:
                out[key] = data
        return out


class View(Subscriber, Generic[R]):
    """Base class of a view. Subclass with `name=`, `sources=[EntityClass, ...]` and a row type, View[Row];
    `indexes=[field, (field, field), ...]` declares what it is queried by (one index each)."""

    kind = "view"
    row_type: ClassVar[type]
    query_fields: ClassVar[dict[str, Field]] = {}
    query_indexes: ClassVar[list[Index]] = []

    def __init_subclass__(cls, indexes: Iterable[IndexDecl] = (), **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for base in getattr(cls, "__orig_bases__", ()):
            args = getattr(base, "__args__", ())
            if args and isinstance(args[0], type):
                cls.row_type = args[0]
        declared = list(indexes) or list(cls.__dict__.get("indexes", ()))
        if declared:
            if not isinstance(getattr(cls, "row_type", None), type):
                raise ConfigError(f"view {cls.name}: declare the row type, View[MyRow], to declare indexes")
            cls.query_fields, cls.query_indexes = declared_fields(cls.name, cls.row_type, declared)

    @classmethod
    def check(cls, table: HandlerTable) -> None:
        if not isinstance(getattr(cls, "row_type", None), type):
            raise ConfigError(f"view {cls.__name__}: declare the row type, View[MyRow]")
        if any(h.is_async for h in table.handlers.values()):
            raise ConfigError(f"view {cls.__name__}: handlers update rows and must not be async")


class ViewQuery(Generic[R]):
    """Read a view's rows: by key, in key order, or by a query over its declared fields."""

    def __init__(self, view: type[View[R]], store: ViewStore, runner: ViewRunner | None = None) -> None:
        self.view = view
        self.store = store
        self.runner = runner  # the view's runner in this process: live queries follow its batches
        self._decoder: msgspec.json.Decoder[R] = msgspec.json.Decoder(view.row_type)
        self._declared = False

    async def declare(self, *, again: bool = False) -> None:
        """Create the view's declared indexes in its store (once, or `again`: each start of its
        runner, which also builds any a stopped catch-up left suspended; drops the ones no longer
        declared)."""
        if again or not self._declared:
            await self.store.declare(self.view.name, self.view.query_indexes)
            self._declared = True

    async def query(
        self,
        where: Where | str | None = None,
        *,
        order_by: Iterable[str] = (),
        limit: int = 100,
        page: str | None = None,
    ) -> Page[R]:
        """Rows passing `where` (a tree or a where-expression), sorted by `order_by` (`-field`: down),
        at most `limit`, from `page` (the previous page's `next`). QueryError names what is wrong."""
        tree = parse_where(where) if isinstance(where, str) else where
        return await self.run(Query(where=tree, order_by=list(order_by), limit=limit, page=page))

    async def run(self, query: Query) -> Page[R]:
        """`query` in its JSON form (the NATS door's body)."""
        checked = plan(self.view.name, self.view.query_fields, query)
        await self.declare()
        found = await self.store.select(self.view.name, dataclasses.replace(checked, limit=query.limit + 1))
        more, found = len(found) > query.limit, found[: query.limit]  # one more read says if a next page exists
        rows = [(k, self._decoder.decode(v)) for k, v in found]
        token = None
        if more:
            last_key, last = found[-1]
            token = encode_token(query, checked.order, last_key, msgspec.json.decode(last))
        return Page(rows, token)

    async def version(self) -> int:
        """The view's version: one more per committed batch that wrote rows (its change notices carry it)."""
        return (await self.store.checkpoints(self.view.name)).get(VERSION, 0)

    async def run_at_version(self, query: Query, attempts: int = 20) -> tuple[Page[R], int]:
        """`run`, and the version its rows are at: the version read before and after is the same, so
        no batch landed in between (a batch stores its rows and its version together)."""
        for _ in range(attempts):
            before = await self.version()
            page = await self.run(query)
            if await self.version() == before:
                return page, before
        raise Unavailable(f"view {self.view.name}: batches kept landing during {attempts} reads; retry")

    async def count(self, where: Where | str | None = None) -> int:
        """How many rows pass `where`."""
        tree = parse_where(where) if isinstance(where, str) else where
        checked = plan(self.view.name, self.view.query_fields, Query(where=tree))
        await self.declare()
        return await self.store.count(self.view.name, checked.where, checked.kinds)

    @contextlib.asynccontextmanager
    async def live(self, where: Where | str | None = None) -> AsyncIterator[AsyncIterator[Event[R]]]:
        """Follow the rows passing `where`: a `Snapshot`, then each `Change`; `Resync` if fallen behind.

        Needs the view's runner in this process (the service that runs the view)."""
        if self.runner is None:
            raise QueryError(f"view {self.view.name}: live queries need the process that runs the view")
        if not self.runner.running:  # another member runs it (or it is being rebuilt): nothing would come
            raise Unavailable(
                f"view {self.view.name} is not running in this process: follow it over NATS"
                " ({prefix}.view.{name}.changes) or HTTP (?live=1), which any member serves; or retry"
            )
        tree = parse_where(where) if isinstance(where, str) else where
        checked = plan(self.view.name, self.view.query_fields, Query(where=tree))
        await self.declare()
        runner = self.runner

        async def snapshot() -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            page = Query(where=tree, limit=1000)
            while True:
                p = plan(self.view.name, self.view.query_fields, page)
                found = await self.store.select(self.view.name, p)
                out.update(found)
                if len(found) < page.limit:
                    return out
                last_key, last = found[-1]
                page.page = encode_token(page, p.order, last_key, msgspec.json.decode(last))

        async with live(
            runner.changes, runner.lock, snapshot, lambda: runner.version, checked.where, self._decoder.decode
        ) as events:
            yield events

    async def get(self, key: str) -> R | None:
        data = await self.store.get(self.view.name, key)
        return None if data is None else self._decoder.decode(data)

    async def scan(self, *, after: str = "", limit: int = 100) -> list[tuple[str, R]]:
        return [
            (k, self._decoder.decode(v)) for k, v in await self.store.scan(self.view.name, after=after, limit=limit)
        ]

    async def all(self) -> dict[str, R]:
        out: dict[str, R] = {}
        after = ""
        while page := await self.scan(after=after, limit=1000):
            out.update(page)
            after = page[-1][0]
        return out


_PASSES = 4  # passes over a batch to find the rows it reads, before the rest are read one by one


class _Probe:
    """Row reads of a pass that finds out which rows a batch reads: those fetched so far, and the
    others noted (answered None until they are fetched)."""

    def __init__(self, known: Mapping[str, bytes | None]) -> None:
        self.known = known
        self.missed: set[str] = set()

    def get(self, key: str) -> bytes | None:
        if key in self.known:
            return self.known[key]
        self.missed.add(key)
        return None


class _Known:
    """A store's row reads, with the rows fetched ahead answered from memory."""

    def __init__(self, raw: RawRows, known: Mapping[str, bytes | None]) -> None:
        self.raw = raw
        self.known = known

    def get(self, key: str) -> bytes | None:
        return self.known[key] if key in self.known else self.raw.get(key)


def _fetch_ahead(
    run: Callable[[RawRows], Rows[Any]], fetch: Callable[[Iterable[str]], dict[str, bytes | None]]
) -> tuple[Rows[Any] | None, dict[str, bytes | None]]:
    """Run a batch's handlers until a pass reads only rows fetched already, fetching the ones each
    pass missed in one round trip: most batches take two passes and one query instead of a round
    trip per row. Handlers are pure row updates, so running them again changes nothing but the
    rows. A pass that fails after reading a missing row may have failed for want of it: it runs
    again. Returns the rows of the pass that read everything (None if none did) and what was fetched."""
    known: dict[str, bytes | None] = {}
    for _ in range(_PASSES):
        probe = _Probe(known)
        try:
            rows = run(probe)
        except Exception:
            if not probe.missed:
                raise
        else:
            if not probe.missed:
                return rows, known
        known.update(fetch(probe.missed))
    return None, known


def _waiting(
    first: _Page | Exception, receive: MemoryObjectReceiveStream[_Page | Exception], most: int
) -> tuple[list[_Page], Exception | None]:
    """`first` and the pages already read behind it, up to `most` events: one transaction for all
    of them. A catch-up's transactions grow as long as the store is slower than the journal reads,
    and each row of an index b-tree's page written once per transaction costs less the more rows
    a transaction puts on it. Also the read's error, if one came (the pages before it go first)."""
    pages: list[_Page] = []
    item: _Page | Exception = first
    size = 0
    while True:
        if isinstance(item, Exception):
            return pages, item
        pages.append(item)
        size += item.read
        if size >= most:
            return pages, None
        try:
            item = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return pages, None


def _merged(pages: list[_Page]) -> _Page:
    """Consecutive pages as one: their work in order, the last one's checkpoints."""
    if len(pages) == 1:
        return pages[0]
    return _Page(
        [item for p in pages for item in p.work],
        pages[-1].checkpoints,
        max(p.newest for p in pages),
        sum(p.read for p in pages),
        pages[-1].last,
    )


def _fast(plain: Mapping[str, PlainEvent], msg: Msg, position: int | None) -> tuple[int, int, ToApply | None] | None:
    """(position, recorded time, what to apply or None) of a plain event's message, read off its
    headers and payload alone (the envelope is built only for a handler that takes it); None sends
    it down the path that builds its envelope (an event of another version, a sealed payload left
    from when the type was encrypted, anything odd: that path names what is wrong)."""
    h = msg.headers
    if h is None:
        return None
    entry = plain.get(h.get(H_EVENT, ""))
    if entry is None:
        return None
    text, version, decode, handler = entry
    try:
        if handler is not None and handler.wants_envelope:
            env = envelope_from_message(msg.subject, h, msg.data)
            if env.version != version or is_sealed(env.payload):
                return None
            at = env.position if position is None else position
            return at, env.recorded_at, (handler, decode(env.payload), env)
        if H_SEQ not in h or h.get(H_VERSION, "1") != text or is_sealed(msg.data):
            return None
        at = int(h.get(H_POSITION, 0)) if position is None else position
        recorded = int(h.get(H_RECORDED, 0))
        return at, recorded, None if handler is None else (handler, decode(msg.data), None)
    except (ValueError, msgspec.DecodeError):
        return None


class ViewRunner(StreamRunner):
    """Keeps one view up to date: one pull loop per source stream, one store transaction per batch.

    With `journal` (the service's own journal, co-located) a view far behind its sources first
    catches up from the journal by position (`catch_up_from_journal`), then follows the streams.

    Checkpoints (all written in the same transaction as the rows they cover):
    - `{stream}:{type}`: the last stream sequence applied from the type's stream (where the durable
      consumer restarts, and what a redelivery is checked against);
    - `@position:{type}`: every event of the type with a journal position at or below it has been
      applied. Both paths keep it (a stream message carries its position in `Memoir-Position`; in
      the JetStream journal's stream the position is the sequence), so it is the key the journal
      read and the stream agree on: an event is applied only above it, whichever path brings it.
    """

    def __init__(
        self,
        view: type[View[Any]],
        store: ViewStore,
        nc: NATS,
        *,
        prefix: str,
        batch: int = 500,
        streams: StreamResolver | None = None,
        keys: KeyRing | None = None,
        journal: Journal | None = None,
        catchup_behind: int = 10_000,
        catchup_page: int = 10_000,
        catchup_transaction: int = 10_000,
        catchup_builds_indexes: int = 100_000,
    ) -> None:
        self.table = view.table()
        self.keys = keys  # opens the events of encrypted entity types
        super().__init__(view.name, self.table.sources, nc, prefix=prefix, streams=streams)
        self.view = view
        self.instance = view()
        self.store = store
        self.batch = batch
        self.journal = journal
        self.catchup_behind = catchup_behind  # read the journal when at least this many positions behind
        self.catchup_page = catchup_page  # events per journal read
        # the most events a catch-up transaction takes: pages read while the one before was stored
        self.catchup_transaction = max(catchup_page, catchup_transaction)
        # a catch-up into no rows at least this many positions long builds the indexes at its end
        self.catchup_builds_indexes = catchup_builds_indexes
        self.query = ViewQuery(view, store, self)
        self.changes = Changes()  # committed batches, to the live queries of this process
        self.on_batch: list[Callable[[Batch], Awaitable[None]]] = []  # after each commit: NATS notices
        self.version = 0  # batches committed (stored as the `@version` checkpoint)
        self.running = False  # following its streams in this process (live queries need it)
        self.applied = 0
        self.forgotten = 0  # events skipped because their entity was forgotten
        self.from_journal = 0  # source events read from the journal while catching up (applied or not)
        self.last_recorded_at = 0  # the recorded time of the newest event applied (view lag)
        self.lock = anyio.Lock()  # two source streams must not interleave their read-modify-writes
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(view.row_type)
        self._encoder = msgspec.json.Encoder()
        self._checkpoints: dict[str, int] = {}
        self._start: dict[str, int] = {}  # entity type -> the stream sequence its consumer starts at
        self._plain = plain_events(self.table)  # the fast path of the stream's plain events

    async def run(self) -> None:
        await self.query.declare(again=True)
        self._checkpoints = await self.store.checkpoints(self.view.name)
        stored = self._checkpoints.get(VERSION, 0)
        if stored > self.version and self.version:  # another member ran the view meanwhile
            self.changes.end(f"view {self.view.name} moved on elsewhere (version {self.version} to {stored})")
        self.version = max(self.version, stored)
        self.running = True
        try:
            await self._follow_sources()
        finally:
            self.running = False

    async def _follow_sources(self) -> None:
        if self.journal is not None:
            await self._positions_of_older_checkpoints()
            try:
                await self.catch_up_from_journal()
            except JournalError as exc:  # the streams bring the rest: slower, as correct (positions)
                log.warning("view catch-up from the journal stopped", view=self.view.name, error=str(exc))
            self._start = {t: await self._stream_start(t) for t in self.sources}
        await super().run()

    def source_key(self, entity_type: str) -> str:
        """The checkpoint's key: one per stream and type (the JetStream journal keeps all types in one stream)."""
        return f"{self.streams(entity_type)}:{entity_type}"

    @staticmethod
    def position_key(entity_type: str) -> str:
        """The checkpoint of journal positions: one per type, the same in both paths."""
        return f"@position:{entity_type}"

    def position(self, entity_type: str) -> int:
        """The journal position up to which the type's events have been applied (0: none, or not known)."""
        return self._checkpoints.get(self.position_key(entity_type), 0)

    def pull_options(self, entity_type: str) -> dict[str, Any]:
        key = self.source_key(entity_type)
        in_journal = self.journal is not None and self.journal.event_stream(entity_type) is not None

        async def handle(msgs: list[Msg]) -> None:
            await self._apply(entity_type, key, msgs, in_journal)
            await msgs[-1].ack()  # AckAll: everything up to here

        start = self._start.get(entity_type, self._checkpoints.get(key, 0) + 1)
        return {"handle": handle, "batch": self.batch, "start_seq": start, "ahead": True}

    # -- one event, either path ------------------------------------------------------------------

    async def _prepare(self, env: Envelope, where: Any) -> ToApply | None:
        """Open and decode one event; None when the view has nothing to do with it (forgotten, timer,
        unhandled, undecodable: logged). The stream and the journal paths both go through here;
        `where` (the stream sequence or the journal position) is for the log only."""
        try:
            readable = await self.table.readable(env, self.keys)
        except SealError as exc:
            log.error("event skipped by view", view=self.view.name, at=where, error=str(exc))
            return None
        if readable is None:  # its entity was forgotten: the view holds nothing of it
            self.forgotten += 1
            log.info("forgotten event skipped by view", view=self.view.name, envelope=env.key)
            return None
        return self._decode(readable, where)

    def _decode(self, env: Envelope, where: Any) -> ToApply | None:
        """`_prepare` of an event that is not sealed: no await on the hot path."""
        try:
            found = self.table.decode(env)
        except (ValueError, EventDecodeError, SealError) as exc:
            log.error("event skipped by view", view=self.view.name, at=where, error=str(exc))
            return None
        return None if found is None else (found[1], found[0], env)

    async def _commit(self, work: list[ToApply], checkpoints: dict[str, int], newest: int) -> None:
        """Run the handlers and store their rows with `checkpoints`, in one transaction; `newest` is the
        recorded time of the newest event read (handled or not), for the view's lag."""

        written: dict[str, bytes | None] = {}
        traced = tracing.tracer() is not None and any(
            env is not None and tracing.recorded(env.correlation_id) for _, _, env in work
        )  # spans for some event of the batch: the handlers run once more, in them, on PostgreSQL

        def run(raw: RawRows, spans: bool) -> Rows[Any]:
            rows: Rows[Any] = Rows(raw, self._decoder, self._encoder)
            for handler, event, env in work:
                args = (self.instance, rows, event, env) if handler.wants_envelope else (self.instance, rows, event)
                if spans and env is not None:  # a span per event, in the trace of the command that stored it
                    with self._span(env):
                        handler.fn(*args)
                else:
                    handler.fn(*args)
            return rows

        def transaction(raw: RawRows) -> tuple[Mapping[str, bytes | None], Mapping[str, int]]:
            fetch: Callable[[Iterable[str]], dict[str, bytes | None]] | None = getattr(raw, "fetch", None)
            rows = None
            if fetch is not None:  # each read a round trip (PostgreSQL): find the batch's rows first
                rows, known = _fetch_ahead(lambda probe: run(probe, False), fetch)
                raw = _Known(raw, known)
            if rows is None or traced:  # no pass read everything it needed, or spans are wanted
                rows = run(raw, traced)
            written.clear()
            written.update(rows.writes())
            return written, {**checkpoints, VERSION: self.version + 1} if written else checkpoints

        async with self.lock:
            await self.store.transact(self.view.name, transaction)
            if written:  # a version per batch that wrote rows: consecutive, so a lost notice shows
                self.version += 1
                await self._announce(Batch(self.version, dict(written)))
            if any(env is not None and env.name == FORGOTTEN for _, _, env in work):  # it dropped the entity's rows
                await self.store.scrub()
        self._checkpoints.update(checkpoints)
        self.applied += len(work)
        self.last_recorded_at = max(self.last_recorded_at, newest)

    def _span(self, env: Envelope) -> contextlib.AbstractContextManager[Any]:
        return tracing.reaction(f"apply {self.view.name} {env.name}", env.correlation_id, env.key)

    # -- the stream path -------------------------------------------------------------------------

    async def _apply(self, entity_type: str, stream: str, msgs: list[Msg], in_journal: bool = False) -> None:
        seen = self._checkpoints.get(stream, 0)
        pkey = self.position_key(entity_type)
        done = self._checkpoints.get(pkey, 0)
        work: list[ToApply] = []
        last = seen
        top = done
        newest = 0
        plain = self._plain.get(entity_type)
        traced = tracing.tracer() is not None
        for msg in msgs:
            seq = stream_sequence(msg)
            if seq <= seen:
                continue  # a redelivery of something already applied
            last = max(last, seq)
            # an event in a recorded trace gets its envelope, for its span; the others, the fast path
            fast = None
            if plain is not None and not (traced and tracing.recorded((msg.headers or {}).get(H_CORRELATION_ID))):
                fast = _fast(plain, msg, seq if in_journal else None)
            if fast is not None:  # a plain event: no envelope, no key ring, one lookup
                position, recorded, item = fast
            else:
                try:
                    env = envelope_from_message(msg.subject, msg.headers, msg.data)
                except ValueError as exc:
                    log.error("event skipped by view", view=self.view.name, stream=stream, seq=seq, error=str(exc))
                    continue
                position = seq if in_journal else env.position  # the JetStream journal's position is the sequence
                recorded = env.recorded_at
                item = None
                if not position or position > done:
                    where = (stream, seq)
                    item = await self._prepare(env, where) if is_sealed(env.payload) else self._decode(env, where)
            if position:
                if position <= done:
                    continue  # applied already, from the journal
                top = max(top, position)
            if item is not None:
                work.append(item)
            if recorded > newest:
                newest = recorded
        if last == seen:
            return
        checkpoints = {stream: last}
        if top > done:
            checkpoints[pkey] = top
        await self._commit(work, checkpoints, newest)

    async def _stream_start(self, entity_type: str) -> int:
        """Where the type's consumer starts: after its stream checkpoint, or after the first message
        above its position checkpoint if that is later (after a catch-up from the journal)."""
        after_seq = self._checkpoints.get(self.source_key(entity_type), 0) + 1
        done = self.position(entity_type)
        if done == 0 or self.journal is None:
            return after_seq
        if self.journal.event_stream(entity_type) is not None:
            return max(after_seq, done + 1)  # the journal's own stream: position == stream sequence
        try:
            return max(after_seq, await first_above(self.js, self.streams(entity_type), done))
        except (NatsError, JetStreamError, ValueError) as exc:  # correct anyway: the position check skips
            log.info("hand-over not located in the stream", view=self.view.name, error=str(exc))
            return after_seq

    # -- the journal path ------------------------------------------------------------------------

    async def _positions_of_older_checkpoints(self) -> None:
        """A view stored before position checkpoints has only stream sequences: the message at its
        checkpoint carries the position it stands for (every message of the stream up to it applied,
        in position order). Kept in memory; the next transaction stores it. Unknown stays unknown."""
        assert self.journal is not None
        for t in self.sources:
            seq = self._checkpoints.get(self.source_key(t), 0)
            if not seq or self.position(t):
                continue
            if self.journal.event_stream(t) is not None:
                self._checkpoints[self.position_key(t)] = seq  # the JetStream journal: the same number
                continue
            try:
                msg = await self.js.get_msg(self.streams(t), seq=seq)
                found = int((msg.headers or {}).get(H_POSITION, 0))
            except (NatsError, JetStreamError, ValueError) as exc:
                log.info("position of the view's checkpoint unknown", view=self.view.name, seq=seq, error=str(exc))
                continue
            if found:
                self._checkpoints[self.position_key(t)] = found

    async def catch_up_from_journal(self) -> int:
        """Apply the co-located journal's events by position, in transactions of the pages read
        while the one before was stored (up to `catchup_transaction` events), while the view is
        `catchup_behind` positions or more behind; returns how many events were applied.

        Stops at the journal's last position as it was when the catch-up began (or at an empty
        read); the streams take over from each type's position checkpoint. A view with a stream
        checkpoint whose position is unknown (stored before position checkpoints, and its message
        gone from the stream) keeps to the stream: it cannot tell where it is in the journal.

        A catch-up into a view with no rows, `catchup_builds_indexes` positions or more long, goes
        without the view's indexes and builds them before it returns (`_suspends_indexes`); one that
        fails builds them before its error is raised (or, given no time to, the next start does).
        """
        assert self.journal is not None
        types = list(self.sources)
        if any(self._checkpoints.get(self.source_key(t), 0) and not self.position(t) for t in types):
            return 0
        start = min(self.position(t) for t in types)
        end = await self.journal.last_position()
        if end - start < self.catchup_behind:
            return 0
        applied, began = self.applied, time.perf_counter()
        log.info("view catching up from the journal", view=self.view.name, start=start, end=end)
        suspended = await self._suspends_indexes(end - start)
        try:
            await self._catch_up(start, end)
            if suspended:
                await self._build_indexes()
        except BaseException:
            if suspended:  # bounded, even when cancelled: what is not built then, the next start builds
                with anyio.move_on_after(_REBUILD_ON_FAILURE_S, shield=True):
                    try:
                        await self.store.declare(self.view.name, self.view.query_indexes)
                    except Exception as exc:  # noqa: BLE001 - the catch-up's own error is the one raised
                        log.warning("view indexes left to the next start", view=self.view.name, error=str(exc))
            raise
        log.info(
            "view caught up from the journal",
            view=self.view.name,
            position=min(self.position(t) for t in types),
            applied=self.applied - applied,
            seconds=round(time.perf_counter() - began, 3),
        )
        return self.applied - applied

    async def _suspends_indexes(self, behind: int) -> bool:
        """Whether this catch-up goes without the view's indexes, and if so suspend them
        (`ViewStore.suspend_indexes`): it is `catchup_builds_indexes` positions or more long and the
        view has no rows yet (new, or reset for a rebuild), so they are built once at its end.

        The threshold is in journal positions, all types. A CREATE INDEX reads the store's whole
        rows table, other views' rows too (the indexes are partial, on the view's name), where
        entering rows one at a time costs per row of this view alone: so the catch-up has to be
        big (100,000 by default) to gain in a store shared with views of millions of rows.
        Nothing else writes the view's rows meanwhile: its runner is one per cluster."""
        if not self.view.query_indexes or behind < self.catchup_builds_indexes:
            return False
        if await self.store.scan(self.view.name, limit=1):
            return False  # rows already: the indexes hold them, and keep them
        await self.store.suspend_indexes(self.view.name)
        log.info("view indexes suspended for the catch-up", view=self.view.name, behind=behind)
        return True

    async def _build_indexes(self) -> None:
        """The suspended indexes built, before the view follows its streams (retried while the
        store is away, as a batch would be)."""
        began, retry = time.perf_counter(), Backoff(0.1, cap=2.0)
        while True:
            try:
                await self.store.declare(self.view.name, self.view.query_indexes)
                break
            except Unavailable as exc:
                log.warning("view indexes not built yet", view=self.view.name, error=str(exc))
                await retry.sleep()
        log.info("view indexes built", view=self.view.name, seconds=round(time.perf_counter() - began, 3))

    async def _catch_up(self, start: int, end: int) -> None:
        """The catch-up's pages from `start` to `end`, read and committed."""
        ahead = self.catchup_transaction // self.catchup_page - 1  # pages read while one is stored
        send, receive = anyio.create_memory_object_stream[_Page | Exception](ahead)
        with sole_error():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_pages, send, start, end)
                async with receive:
                    async for first in receive:
                        pages, failed = _waiting(first, receive, self.catchup_transaction)
                        if pages:
                            page = _merged(pages)
                            self.from_journal += page.read
                            await self._commit(page.work, page.checkpoints, page.newest)
                            start = page.last
                        if failed is not None:
                            raise failed  # after the pages read before it were committed

    async def _read_pages(self, send: ObjectSendStream[_Page | Exception], start: int, end: int) -> None:
        """The catch-up's pages, read and decoded one ahead of the commits: while a page's rows are
        written (in the store's thread, which SQLite leaves without the GIL) the next one is read
        and decoded. Its checkpoints say what the pages before it will have applied once committed.
        A read that fails is sent as the last item, so the pages before it are committed first."""
        assert self.journal is not None
        types = list(self.sources)
        done = {t: self.position(t) for t in types}
        async with send:
            try:
                while start < end:
                    page = await self._read_page(start, done)
                    if page is None:
                        break
                    start = page.last
                    done = {t: max(done[t], start) for t in types}
                    await send.send(page)
                return
            except anyio.BrokenResourceError:
                return  # the commits stopped (their error is the one raised)
            except Exception as exc:  # noqa: BLE001 - raised by the commits' side, in order
                failed: Exception = exc
            with contextlib.suppress(anyio.BrokenResourceError):
                await send.send(failed)

    async def _read_page(self, start: int, done: Mapping[str, int]) -> _Page | None:
        """The journal's page after `start`, decoded (None: nothing more); `done`: each source type's
        position applied already (or to be, by the pages before it)."""
        assert self.journal is not None
        page = await self.journal.read_types(self.sources, start + 1, self.catchup_page)  # its sources' alone
        if page.through <= start:
            return None
        work: list[ToApply] = []
        newest = 0
        for env in page.events:
            if env.position <= done[env.entity_type]:
                continue  # applied already
            item = await self._prepare(env, env.position) if is_sealed(env.payload) else self._decode(env, env.position)
            if item is not None:
                work.append(item)
            if env.recorded_at > newest:
                newest = env.recorded_at
        last = page.through
        checkpoints = {self.position_key(t): max(p, last) for t, p in done.items()}
        return _Page(work, checkpoints, newest, len(page.events), last)

    # -- queries and rebuild ---------------------------------------------------------------------

    def checkpoint(self, entity_type: str) -> int:
        """The last stream sequence this view applied from `entity_type`'s events."""
        return self._checkpoints.get(self.source_key(entity_type), 0)

    async def _announce(self, batch: Batch) -> None:
        """After a commit, under the lock (so in version order): to the live queries here, and to
        `on_batch` (the NATS change notices: a publish that only fills the client's buffer)."""
        self.changes.publish(batch)
        for callback in self.on_batch:
            await callback(batch)

    async def rebuild(self) -> None:
        """Forget everything: rows, checkpoints and the durable consumers. Run again to replay history.

        The version goes on counting (a batch that empties the view), so live queries see each row
        removed and then added back as history is re-applied."""
        async with self.lock:
            await self.store.reset(self.view.name)
            self.version += 1
            version = self.version
            await self.store.transact(self.view.name, lambda _: ({}, {VERSION: version}))
            await self._announce(Batch(version, {}, reset=True))
        for entity_type in self.table.sources:
            await delete_durable(self.js, self.streams(entity_type), entity_type, self.view.name)
        self._checkpoints = {VERSION: self.version}
