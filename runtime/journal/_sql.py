"""The half the SQL journals share: schema, statements, the batch writer and the reads.

The writer and recovery are written once, as generators that yield `(sql, args)` and
receive the rows ("sans I/O"): SQLite drives them synchronously in its writer thread
(`drive_sync`), PostgreSQL with awaits (`drive_async`). A batch costs a handful of
statements whatever its size: the stream ids, the heads and the stored command ids of
all its entities in one query each, its events in one multi-row INSERT. A backend
supplies a `Dialect` (placeholders, types, how many rows one statement may carry, how
positions are taken) and runs the statements; see sqlite.py and postgres.py.

Schema version 2 added `commands`: one row per (stream, command id) with the seq of the
command's last event and its reply. It is the journal's memory of applied command ids,
kept forever (until the whole entity is deleted), and its primary key is the last guard
against storing one id twice. Opening a version-1 journal fills it from the events.

Columns added since are guarded by their presence rather than a version (`ADDED_COLUMNS`):
`events.principal`, the verified caller's subject (the audit trail), is added to a journal
file or schema written before it existed, and is NULL on the events stored then.

`events.entity_type` repeats the stream's type on each event, indexed with the position, so a
reader of some types (`read_types`: an outbox publisher's partition) reads only theirs. Added
to an older journal, it is filled from `streams`; and a trigger fills it on any event inserted
without it (a Memoir from before it, still writing in a rolling upgrade), so no event is ever
missing from its type's reads. This Memoir writes it itself, and the trigger's condition is
all it costs.
"""

from __future__ import annotations

import abc
import functools
import itertools
import re
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from ..model.envelope import Envelope, Recovery, Snapshot
from ..model.errors import Conflict, DuplicateCommand, EntityDeleted, JournalError
from ._batching import Batcher
from ._tail import TailCache
from .base import Journal, Page, Selection, check_batch, envelope_from_row, row_values, stream_envelopes

T = TypeVar("T")
Key = tuple[str, str]
Query = tuple[str, Sequence[Any]]
Rows = list[Any]
Steps = Generator[Query, Rows, T]
"""A piece of work as statements: yields (sql, args), is sent each statement's rows."""

SCHEMA_VERSION = 2

_EVENT_COLUMNS = (
    "position, stream, seq, name, version, recorded_at, command_id, correlation_id, causation_id, reply, payload,"
    " principal, entity_type"
)
_EVENT_TYPES = (
    "bigint", "bigint", "bigint", "text", "int", "bigint", "text", "text", "text", "bytea", "bytea", "text", "text"
)  # fmt: skip
_COLUMNS = (
    "e.position, s.entity_type, s.entity_id, e.seq, e.name, e.version, e.recorded_at,"
    " e.command_id, e.correlation_id, e.causation_id, e.reply, e.payload, e.principal"
)
_STREAM_COLUMNS = (  # one entity's: `stream_envelopes` gives them its type and id
    "e.position, e.seq, e.name, e.version, e.recorded_at,"
    " e.command_id, e.correlation_id, e.causation_id, e.reply, e.payload, e.principal"
)
# (table, column, type): columns added after the tables were first released, each added where missing
ADDED_COLUMNS = (("events", "principal", "TEXT"), ("events", "entity_type", "TEXT"))
# what fills a column added to a journal that has rows already
_BACKFILL = {
    ("events", "entity_type"): "UPDATE {s}events SET entity_type ="
    " (SELECT s.entity_type FROM {s}streams s WHERE s.id = {s}events.stream) WHERE entity_type IS NULL",
}
TYPE_INDEX = "CREATE INDEX IF NOT EXISTS events_type_position ON {s}events (entity_type, position)"
TYPE_TRIGGER = "events_type"  # the trigger filling `events.entity_type` (see the module docstring)
_HEAD = "{greatest}(s.floor, coalesce((SELECT max(seq) FROM {s}events WHERE stream = s.id), 0))"
_FOREVER = 2**62

DDL = """
CREATE TABLE IF NOT EXISTS {s}memoir_meta (key TEXT PRIMARY KEY, value {int} NOT NULL);
CREATE TABLE IF NOT EXISTS {s}streams (
    id {serial} PRIMARY KEY,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    floor {int} NOT NULL DEFAULT 0,
    deleted {bool} NOT NULL DEFAULT FALSE,
    UNIQUE (entity_type, entity_id)
);
CREATE TABLE IF NOT EXISTS {s}events (
    position {position} PRIMARY KEY{autoincrement},
    stream {int} NOT NULL REFERENCES {s}streams (id),
    seq {int} NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    recorded_at {int} NOT NULL,
    command_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    reply {blob},
    payload {blob} NOT NULL,
    principal TEXT,
    entity_type TEXT,
    UNIQUE (stream, seq)
);
CREATE TABLE IF NOT EXISTS {s}snapshots (
    stream {int} NOT NULL REFERENCES {s}streams (id),
    seq {int} NOT NULL,
    recorded_at {int} NOT NULL,
    payload {blob} NOT NULL,
    PRIMARY KEY (stream, seq)
){without_rowid};
CREATE TABLE IF NOT EXISTS {s}checkpoints (name TEXT PRIMARY KEY, position {int} NOT NULL);
CREATE TABLE IF NOT EXISTS {s}commands (
    stream {int} NOT NULL REFERENCES {s}streams (id),
    command_id TEXT NOT NULL,
    seq {int} NOT NULL,
    reply {blob},
    PRIMARY KEY (stream, command_id)
){without_rowid};
INSERT INTO {s}memoir_meta VALUES ('schema_version', 2), ('position', 0) ON CONFLICT DO NOTHING;
"""


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL backends; statements are written once with `?` and `{…}` hooks."""

    name: str
    prefix: str  # "" or "schema."
    greatest: str  # max(a, b) as a scalar
    least: str
    types: dict[str, str]  # DDL hooks: int, serial, position, autoincrement, bool, blob, without_rowid
    numbered: bool  # $1, $2 … instead of ?
    # bound values per multi-row statement (its rows are as many as fit); 0 = one statement (arrays);
    # the first column of a row is never NULL (padding rows are all NULL: see `bulk`)
    max_variables: int
    # the last position and a data version, read first in each write transaction. The version
    # changes when another connection committed; where there is one (SQLite's `data_version`;
    # NULL elsewhere) the writer keeps the heads it wrote between batches. One statement for
    # both: each statement is a round trip to PostgreSQL, and on SQLite the writer thread waits
    # for the GIL after every call (it gives it up for each step).
    take_position: str
    keep_position: str | None  # stores the new last position at its end (None: the table does)
    first_command: str  # the v1 -> v2 migration: the first application of each stored command id
    has_column: str  # count(*) of column ? in table ? (the table with its prefix): guards ADDED_COLUMNS
    # create the index on (entity_type, position) and the trigger that fills `events.entity_type` where an
    # insert left it NULL, each only if missing (creating either locks out the writers of other processes)
    type_fill: tuple[str, ...]

    def __hash__(self) -> int:
        return hash((self.name, self.prefix))

    def ddl(self) -> str:
        return _format(DDL, s=self.prefix, **self.types)

    def sql(self, text: str) -> str:
        return _render(self, text)

    def bulk(self, template: str, rows: Sequence[tuple[Any, ...]], types: Sequence[str]) -> list[Query]:
        """`template` with `{rows}` standing for the rows as a relation (VALUES or unnest)."""
        if not self.max_variables:
            arrays = ", ".join(f"?::{t}[]" for t in types)
            cols = ", ".join(f"column{i + 1}" for i in range(len(types)))
            sql = self.sql(template.replace("{rows}", f"SELECT * FROM unnest({arrays}) AS u({cols})"))
            return [(sql, [list(c) for c in zip(*rows, strict=True)])]
        # Multi-row statements come in a few sizes only, the rows padded with NULLs up to the next
        # power of two (the WHERE drops them; a join never matches them): each size is a prepared
        # statement of its own in the connection's cache, hundreds of kB at hundreds of rows, so
        # one per row count would grow the process by ~90 MB per template and prepare anew nearly
        # every batch.
        out: list[Query] = []
        width = len(types)
        per = max(1, self.max_variables // width)
        for i in range(0, len(rows), per):
            part = rows[i : i + per]
            size = min(per, 1 << (len(part) - 1).bit_length())
            values = list(itertools.chain.from_iterable(part))
            values += [None] * (width * (size - len(part)))
            relation = f"SELECT * FROM (VALUES {_values(size, width)}) WHERE column1 IS NOT NULL"
            out.append((self.sql(template.replace("{rows}", relation)), values))
        return out


def _format(text: str, **hooks: str) -> str:
    for k, v in hooks.items():
        text = text.replace("{" + k + "}", v)
    return text


@functools.lru_cache(maxsize=8192)
def _render(d: Dialect, text: str) -> str:
    text = _format(
        text, s=d.prefix, greatest=d.greatest, least=d.least, head=_format(_HEAD, s=d.prefix, greatest=d.greatest)
    )
    if d.numbered:
        n = itertools.count(1)
        text = re.sub(r"\?", lambda _: f"${next(n)}", text)
    return text


@functools.cache
def _values(n: int, width: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * n)


# -- drivers -------------------------------------------------------------------------------------


def drive_sync(execute: Callable[[str, Sequence[Any]], Rows], steps: Steps[T]) -> T:
    try:
        query = next(steps)
        while True:
            query = steps.send(execute(*query))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(execute: Callable[[str, Sequence[Any]], Awaitable[Rows]], steps: Steps[T]) -> T:
    try:
        query = next(steps)
        while True:
            query = steps.send(await execute(*query))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# -- the batch writer ----------------------------------------------------------------------------


class Append(msgspec.Struct):
    key: Key
    expected_seq: int
    rows: list[tuple[Any, ...]]  # row_values of each event
    command_id: str | None  # the command's id and reply ride on its last event
    reply: bytes | None


class Op(msgspec.Struct):
    """Any other write: steps that run inside the batch's transaction."""

    fn: Callable[[Dialect, StreamIds], Steps[Any]]
    keeps_heads: bool = False  # True: it changes no stream's head, floor or deleted flag


class StreamIds:
    """(type, id) -> stream row id, cached: ids never change once assigned. Used by the writer only."""

    MAX = 200_000

    def __init__(self) -> None:
        self.ids: dict[Key, int] = {}
        # stream id -> (head, deleted) as this writer's last transaction left them; kept between
        # batches only while `data_version` says no other connection has written since
        self.heads: dict[int, tuple[int, bool]] = {}
        self.version: int | None = None

    def heads_as_of(self, version: int | None) -> None:
        """Keep the heads only if nobody else wrote since this writer's last transaction."""
        if version is None or version != self.version or len(self.heads) > self.MAX:
            self.heads.clear()
        self.version = version

    def forget(self) -> None:
        """After a rollback: ids created and heads moved in the transaction are gone."""
        self.ids.clear()
        self.heads.clear()
        self.version = None

    def lookup(self, d: Dialect, keys: Sequence[Key], *, create: bool) -> Steps[dict[Key, int]]:
        missing = list({k for k in keys if k not in self.ids})
        if missing:
            if len(self.ids) + len(missing) > self.MAX:
                self.ids.clear()
            if create:
                for q in d.bulk(
                    "INSERT INTO {s}streams (entity_type, entity_id) {rows} ON CONFLICT DO NOTHING",
                    missing,
                    ("text", "text"),
                ):
                    yield q
            for q in d.bulk(  # a join: `(type, id) IN (VALUES …)` would scan the table
                "SELECT s.entity_type, s.entity_id, s.id FROM ({rows}) AS v"
                " JOIN {s}streams s ON s.entity_type = v.column1 AND s.entity_id = v.column2",
                missing,
                ("text", "text"),
            ):
                self.ids.update(((t, i), sid) for t, i, sid in (yield q))
        return self.ids

    def one(self, d: Dialect, key: Key, *, create: bool) -> Steps[int | None]:
        return (yield from self.lookup(d, [key], create=create)).get(key)


def write_batch(d: Dialect, streams: StreamIds, batch: Sequence[Append | Op]) -> Steps[list[Any]]:
    """One transaction's statements; appends and other writes keep their order."""
    ((position, version),) = yield (d.sql(d.take_position), ())
    streams.heads_as_of(version)
    start = position
    results: list[Any] = []
    run: list[Append] = []
    for op in batch:
        if isinstance(op, Append):
            run.append(op)
            continue
        if run:
            position = yield from _write_appends(d, streams, run, position, results)
            run = []
        results.append((yield from op.fn(d, streams)))
        if not op.keeps_heads:
            streams.heads.clear()
    if run:
        position = yield from _write_appends(d, streams, run, position, results)
    if d.keep_position is not None and position != start:
        yield (d.sql(d.keep_position), (position,))
    return results


def _write_appends(
    d: Dialect, streams: StreamIds, appends: list[Append], position: int, results: list[Any]
) -> Steps[int]:
    ids = yield from streams.lookup(d, [op.key for op in appends], create=True)
    sids = [ids[op.key] for op in appends]
    heads = streams.heads
    unknown = [(s,) for s in set(sids) if s not in heads]  # SQLite: usually none, the writer kept them
    lookups = d.bulk(
        "SELECT s.id, s.deleted, {head} FROM ({rows}) AS v JOIN {s}streams s ON s.id = v.column1",
        unknown,
        ("bigint",),
    )
    for q in lookups if unknown else []:
        heads.update((sid, (head, bool(deleted))) for sid, deleted, head in (yield q))
    seen: dict[tuple[int, str], tuple[int, bytes | None]] = {}
    asked = list({(s, op.command_id) for s, op in zip(sids, appends, strict=True) if op.command_id is not None})
    if asked:  # the commands' ids already stored: checked before the seqs, so a stale repeat is a repeat
        for q in d.bulk(
            "SELECT c.stream, c.command_id, c.seq, c.reply FROM ({rows}) AS v"
            " JOIN {s}commands c ON c.stream = v.column1 AND c.command_id = v.column2",
            asked,
            ("bigint", "text"),
        ):
            seen.update(((s, c), (seq, None if r is None else bytes(r))) for s, c, seq, r in (yield q))
    position, rows, commands = decide(sids, appends, heads, seen, position, results)
    if rows:
        for q in d.bulk(f"INSERT INTO {{s}}events ({_EVENT_COLUMNS}) {{rows}}", rows, _EVENT_TYPES):
            yield q
    if commands:
        for q in d.bulk(
            "INSERT INTO {s}commands (stream, command_id, seq, reply) {rows}",
            commands,
            ("bigint", "text", "bigint", "bytea"),
        ):
            yield q
    return position


Decided = tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]


def decide(
    sids: Sequence[int],
    appends: Sequence[Append],
    heads: dict[int, tuple[int, bool]],
    seen: dict[tuple[int, str], tuple[int, bytes | None]],
    position: int,
    results: list[Any],
) -> Decided:
    """Each append's fate, in order, from the heads and the stored command ids it is given: its first
    position in `results` (or the error), and the event and command rows to insert. `heads` and `seen`
    move with each accepted append, so a later one in the batch sees it."""
    rows: list[tuple[Any, ...]] = []
    commands: list[tuple[Any, ...]] = []
    for sid, op in zip(sids, appends, strict=True):
        if op.command_id is not None and (hit := seen.get((sid, op.command_id))) is not None:
            results.append(DuplicateCommand(op.key[0], op.key[1], op.command_id, hit[0], hit[1]))
            continue
        head, deleted = heads[sid]
        if deleted:
            results.append(EntityDeleted(*op.key))
            continue
        if head != op.expected_seq:
            results.append(Conflict(op.key[0], op.key[1], op.expected_seq, head))
            continue
        results.append(position + 1)
        for r in op.rows:
            position += 1
            rows.append((position, sid, *r, op.key[0]))
        head += len(op.rows)
        heads[sid] = (head, deleted)  # a later append in this batch sees this one
        if op.command_id is not None:
            seen[(sid, op.command_id)] = (head, op.reply)
            commands.append((sid, op.command_id, head, op.reply))
    return position, rows, commands


def _delete(key: Key, to_seq: int | None) -> Callable[[Dialect, StreamIds], Steps[None]]:
    def steps(d: Dialect, streams: StreamIds) -> Steps[None]:
        sid = yield from streams.one(d, key, create=True)
        ((head,),) = yield (d.sql("SELECT {head} FROM {s}streams s WHERE s.id=?"), (sid,))
        upto = head if to_seq is None else min(to_seq, head)
        yield (d.sql("DELETE FROM {s}events WHERE stream=? AND seq<=?"), (sid, upto))
        yield (d.sql("UPDATE {s}streams SET floor={greatest}(floor, ?) WHERE id=?"), (upto, sid))
        if to_seq is None:
            yield (d.sql("DELETE FROM {s}snapshots WHERE stream=?"), (sid,))
            yield (d.sql("DELETE FROM {s}commands WHERE stream=?"), (sid,))
            yield (d.sql("UPDATE {s}streams SET deleted=TRUE WHERE id=?"), (sid,))

    return steps


def _save_snapshot(s: Snapshot) -> Callable[[Dialect, StreamIds], Steps[None]]:
    def steps(d: Dialect, streams: StreamIds) -> Steps[None]:
        sid = yield from streams.one(d, (s.entity_type, s.entity_id), create=True)
        yield (
            d.sql(
                "INSERT INTO {s}snapshots VALUES (?,?,?,?) ON CONFLICT (stream, seq)"
                " DO UPDATE SET recorded_at=excluded.recorded_at, payload=excluded.payload"
            ),
            (sid, s.seq, s.recorded_at, s.payload),
        )

    return steps


def _delete_snapshots(key: Key, to_seq: int) -> Callable[[Dialect, StreamIds], Steps[None]]:
    def steps(d: Dialect, streams: StreamIds) -> Steps[None]:
        sid = yield from streams.one(d, key, create=False)
        if sid is not None:
            yield (d.sql("DELETE FROM {s}snapshots WHERE stream=? AND seq<=?"), (sid, to_seq))

    return steps


def _restore(key: Key, rows: list[tuple[Any, ...]]) -> Callable[[Dialect, StreamIds], Steps[None]]:
    def steps(d: Dialect, streams: StreamIds) -> Steps[None]:
        sid = yield from streams.one(d, key, create=True)
        template = f"INSERT INTO {{s}}events ({_EVENT_COLUMNS}) {{rows}} ON CONFLICT DO NOTHING"
        for q in d.bulk(template, [(r[0], sid, *r[1:], key[0]) for r in rows], _EVENT_TYPES):  # noqa: UP028 - results are sent back
            yield q

    return steps


def _save_checkpoint(name: str, position: int) -> Callable[[Dialect, StreamIds], Steps[None]]:
    def steps(d: Dialect, streams: StreamIds) -> Steps[None]:
        yield (
            d.sql(
                "INSERT INTO {s}checkpoints VALUES (?,?) ON CONFLICT (name) DO UPDATE SET position=excluded.position"
            ),
            (name, position),
        )

    return steps


# -- schema and recovery ---------------------------------------------------------------------------


def migrate(d: Dialect, where: str) -> Steps[None]:
    """After the DDL, inside its transaction: bring an older schema up to this one."""
    ((version,),) = yield (d.sql("SELECT value FROM {s}memoir_meta WHERE key='schema_version'"), ())
    if version > SCHEMA_VERSION:
        raise JournalError(f"{where}: schema version {version} is newer than this Memoir ({SCHEMA_VERSION})")
    if version < 2:  # the command ids stored before there was a table of them
        yield (d.sql(d.first_command), ())
        yield (d.sql("UPDATE {s}memoir_meta SET value=2 WHERE key='schema_version'"), ())
    for table, column, kind in ADDED_COLUMNS:
        ((present,),) = yield (d.sql(d.has_column), (d.prefix + table, column))
        if not present:
            yield (d.sql(f"ALTER TABLE {{s}}{table} ADD COLUMN {column} {kind}"), ())
            if (fill := _BACKFILL.get((table, column))) is not None:
                yield (d.sql(fill), ())
    for statement in d.type_fill:
        yield (d.sql(statement), ())


def recover_steps(d: Dialect, keys: Sequence[Key]) -> Steps[list[Recovery]]:
    """The recoveries of several entities; run inside one read transaction so each one agrees with itself."""
    found: dict[Key, tuple[int, int, Any]] = {}
    for q in d.bulk(  # one query finds which entities exist at all, and their heads
        "SELECT s.entity_type, s.entity_id, s.id, {head}, s.deleted FROM ({rows}) AS v"
        " JOIN {s}streams s ON s.entity_type = v.column1 AND s.entity_id = v.column2",
        list(keys),
        ("text", "text"),
    ):
        found.update(((t, i), (sid, h, dl)) for t, i, sid, h, dl in (yield q))
    out: list[Recovery] = []
    for key in keys:
        stream = found.get(key)
        if stream is None:
            out.append(Recovery(None, [], 0))
            continue
        sid, head, deleted = stream
        snap = yield (
            d.sql("SELECT seq, recorded_at, payload FROM {s}snapshots WHERE stream=? ORDER BY seq DESC LIMIT 1"),
            (sid,),
        )
        snapshot = None
        if snap:
            seq, at, payload = snap[0]
            snapshot = Snapshot(entity_type=key[0], entity_id=key[1], seq=seq, recorded_at=at, payload=bytes(payload))
        rows = yield (
            d.sql(f"SELECT {_STREAM_COLUMNS} FROM {{s}}events e WHERE e.stream=? AND e.seq>? ORDER BY e.seq"),
            (sid, snapshot.seq if snapshot else 0),
        )
        out.append(Recovery(snapshot, stream_envelopes(*key, rows), head, bool(deleted)))
    return out


# -- the journal -----------------------------------------------------------------------------------


class SqlJournal(Journal):
    """Everything but the connections: a backend implements `_flush` (run a batch's steps in one
    write transaction) and `_fetch` (one read statement), and passes its dialect."""

    def __init__(self, dialect: Dialect, *, max_batch: int) -> None:
        self.dialect = dialect
        self._writes: Batcher[Append | Op, Any] = Batcher(self._flush, max_batch=max_batch, name=dialect.name)
        self._streams = StreamIds()
        self._tail = TailCache()

    @abc.abstractmethod
    async def _flush(self, batch: list[Append | Op]) -> list[Any]: ...

    @abc.abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> Rows: ...

    def _batch(self, batch: Sequence[Append | Op]) -> Steps[list[Any]]:
        return write_batch(self.dialect, self._streams, batch)

    def _forget_streams(self) -> None:
        """After a rollback: ids created and heads moved in the transaction are gone."""
        self._streams.forget()

    # -- writes ----------------------------------------------------------------------------------

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        key = check_batch(events, expected_seq)
        last = events[-1]
        generation = self._tail.generation
        first = await self._writes.submit(
            Append(key, expected_seq, [row_values(e) for e in events], last.command_id, last.reply)
        )
        stored = [msgspec.structs.replace(e, position=first + i) for i, e in enumerate(events)]
        self._tail.add(stored, generation)
        self._notify_appended()
        return stored

    async def _write(self, fn: Callable[[Dialect, StreamIds], Steps[Any]], *, keeps_heads: bool = False) -> Any:
        """Run `fn`'s steps inside the next batch's write transaction; returns what they return."""
        return await self._writes.submit(Op(fn, keeps_heads))

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        self._tail.clear()  # before and after: no read from here sees the events once they are gone
        try:
            await self._write(_delete((entity_type, entity_id), to_seq))
        finally:
            self._tail.clear()

    async def restore_events(self, events: Sequence[Envelope]) -> int:
        """Put one entity's events back at their own seqs and positions (`memoir archive restore`).

        Events the journal holds already are left as they are; positions are the old ones, so a
        reader past them never sees them again (they were read once, before they were moved)."""
        if not events:
            return 0
        key = (events[0].entity_type, events[0].entity_id)
        self._tail.clear()
        try:
            await self._write(_restore(key, [(e.position, *row_values(e)) for e in events]))
        finally:
            self._tail.clear()
        return len(events)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._write(_save_snapshot(snapshot), keeps_heads=True)

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        await self._write(_delete_snapshots((entity_type, entity_id), to_seq), keeps_heads=True)

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self._write(_save_checkpoint(name, position), keeps_heads=True)

    async def after_erase(self) -> None:
        """After a key was destroyed: make it unrecoverable from the storage's own files where possible."""

    # -- reads -----------------------------------------------------------------------------------

    async def _query(self, sql: str, *args: Any) -> Rows:
        return await self._fetch(self.dialect.sql(sql), *args)

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM {{s}}events e JOIN {{s}}streams s ON s.id = e.stream"
            " WHERE s.entity_type=? AND s.entity_id=? AND e.seq>=? AND e.seq<=? ORDER BY e.seq LIMIT ?",
            entity_type,
            entity_id,
            from_seq,
            _FOREVER if to_seq is None else to_seq,
            _FOREVER if limit is None else limit,
        )
        return [envelope_from_row(r) for r in rows]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        recent = self._tail.read(from_position, limit)
        if recent is not None:
            return recent
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM {{s}}events e JOIN {{s}}streams s ON s.id = e.stream"
            " WHERE e.position>=? ORDER BY e.position LIMIT ?",
            from_position,
            limit,
        )
        return [envelope_from_row(r) for r in rows]

    async def read_selected(self, selection: Selection, from_position: int = 1, limit: int = 1000) -> Page:
        """Only the selected events (types by the index on (type, position)); it looked as far as a
        position committed before the query (`_typed_rows`), or its last event if it read `limit`."""
        if selection.empty() or limit < 1:
            return Page([], from_position - 1)
        recent = self._tail.read_where(selection.keeps, from_position, limit)
        if recent is not None:
            return recent
        either: list[str] = []
        args: list[Any] = []
        for column, values in (("e.entity_type", selection.types), ("e.name", selection.names)):
            if values:
                either.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(sorted(values))
        if selection.firsts:
            either.append("e.seq = 1")
        bound, rows = await self._typed_rows(
            f"SELECT {_COLUMNS} FROM {{s}}events e JOIN {{s}}streams s ON s.id = e.stream"
            f" WHERE ({' OR '.join(either)}) AND e.position>=? ORDER BY e.position LIMIT ?",
            (*args, from_position, limit),
        )
        events = [envelope_from_row(r) for r in rows]
        if len(events) >= limit:
            return Page(events, events[-1].position)
        # Positions are committed in order: whatever the query saw, it saw everything below it too.
        return Page(events, max(from_position - 1, bound, events[-1].position if events else 0))

    async def _typed_rows(self, sql: str, args: Sequence[Any]) -> tuple[int, Rows]:
        """A position committed before the query, and the query's rows (a backend does it in one go)."""
        bound = await self.last_position()
        return bound, await self._query(sql, *args)

    async def _stream(self, entity_type: str, entity_id: str) -> tuple[int, bool]:
        rows = await self._query(
            "SELECT {head}, s.deleted FROM {s}streams s WHERE s.entity_type=? AND s.entity_id=?", entity_type, entity_id
        )
        return (rows[0][0], bool(rows[0][1])) if rows else (0, False)

    async def head(self, entity_type: str, entity_id: str) -> int:
        return (await self._stream(entity_type, entity_id))[0]

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return (await self._stream(entity_type, entity_id))[1]

    async def last_position(self) -> int:
        rows = await self._query(self.dialect.take_position.replace(" FOR UPDATE", ""))
        return int(rows[0][0]) if rows else 0

    async def find_command(self, entity_type: str, entity_id: str, command_id: str) -> tuple[int, bytes | None] | None:
        rows = await self._query(
            "SELECT c.seq, c.reply FROM {s}commands c JOIN {s}streams s ON s.id = c.stream"
            " WHERE s.entity_type=? AND s.entity_id=? AND c.command_id=?",
            entity_type,
            entity_id,
            command_id,
        )
        return (rows[0][0], None if rows[0][1] is None else bytes(rows[0][1])) if rows else None

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        rows = await self._query(
            "SELECT n.seq, n.recorded_at, n.payload FROM {s}snapshots n JOIN {s}streams s ON s.id = n.stream"
            " WHERE s.entity_type=? AND s.entity_id=? AND n.seq<=? ORDER BY n.seq DESC LIMIT 1",
            entity_type,
            entity_id,
            _FOREVER if max_seq is None else max_seq,
        )
        if not rows:
            return None
        seq, recorded_at, payload = rows[0]
        return Snapshot(
            entity_type=entity_type, entity_id=entity_id, seq=seq, recorded_at=recorded_at, payload=bytes(payload)
        )

    async def load_checkpoint(self, name: str) -> int:
        rows = await self._query("SELECT position FROM {s}checkpoints WHERE name=?", name)
        return int(rows[0][0]) if rows else 0
