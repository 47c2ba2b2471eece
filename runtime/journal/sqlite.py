"""`sqlite:///path.db`: the embedded default journal.

- WAL mode with `synchronous=FULL` by default: an acknowledged append survived
  an fsync, so it survives a power cut, not just a crash of this process.
  `?synchronous=NORMAL` trades the last transactions on power loss for speed.
- Group commit: every write goes through one `Batcher`, and one worker-thread
  call runs the whole batch in one `BEGIN IMMEDIATE … COMMIT` (one fsync).
  Activations are batched the same way on a second connection, so a burst of
  first commands to many entities costs few thread hops. No SQLite call runs
  on the event loop.
- Compact rows: an entity's (type, id) is stored once, in `streams`, and events
  refer to it by integer. The events' index is then small integers, which
  keeps the pages a random-access workload dirties (and fsyncs) few. The
  `event_log` view joins them back for ad-hoc SQL.
- Positions are SQLite AUTOINCREMENT row ids, assigned inside the exclusive
  write transaction: strictly increasing, never reused after deletion, visible
  in commit order. BEGIN IMMEDIATE also serializes a second writing process.
- An entity's head is the larger of its highest stored seq and `floor`, the
  highest seq ever deleted, so deletion never lets a seq be reused.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import msgspec

from ..model.envelope import Envelope, Recovery, Snapshot
from ..model.errors import ConcurrencyConflict, ConfigError, EntityDeleted, JournalError
from ._batching import Batcher
from .base import ROW_COLUMNS, Journal, check_batch, envelope_from_row, row_values

T = TypeVar("T")
Key = tuple[str, str]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memoir_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    floor INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (entity_type, entity_id)
);
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream INTEGER NOT NULL REFERENCES streams (id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    command_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    reply BLOB,
    payload BLOB NOT NULL,
    UNIQUE (stream, seq)
);
CREATE TABLE IF NOT EXISTS snapshots (
    stream INTEGER NOT NULL REFERENCES streams (id),
    seq INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE VIEW IF NOT EXISTS event_log AS
    SELECT e.position, s.entity_type, s.entity_id, e.seq, e.name, e.version, e.recorded_at,
           e.command_id, e.correlation_id, e.causation_id, e.reply, e.payload
    FROM events e JOIN streams s ON s.id = e.stream;
INSERT OR IGNORE INTO memoir_meta VALUES ('schema_version', 1);
"""

_COLUMNS = ", ".join(ROW_COLUMNS)  # from the event_log view
_INSERT_COLUMNS = "stream, seq, name, version, recorded_at, command_id, correlation_id, causation_id, reply, payload"
_HEAD = "max(s.floor, coalesce((SELECT max(seq) FROM events WHERE stream = s.id), 0))"


# -- the batch writer -------------------------------------------------------------------------
#
# A batch is written in a handful of multi-row statements, not a statement per
# event: the optimistic check of every append is one query, the events one
# INSERT. Only when that check finds a conflict does the batch fall back to
# checking its appends one by one, to say exactly which failed and why.

_CHUNK = 400  # rows per statement: 10 columns x 400 stays under SQLite's 32,766 variables


class _Append(msgspec.Struct):
    key: Key
    expected_seq: int
    rows: list[tuple[Any, ...]]


class _Op(msgspec.Struct):
    """Any other write: a function that runs inside the batch's transaction."""

    fn: Callable[[sqlite3.Connection, _Streams], Any]


@functools.cache
def _values(n: int, width: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * n)


def _chunked(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


class _Streams:
    """(type, id) -> stream row id, cached: ids never change once assigned."""

    MAX = 200_000

    def __init__(self) -> None:
        self.ids: dict[Key, int] = {}

    def lookup(self, conn: sqlite3.Connection, keys: Sequence[Key], *, create: bool) -> dict[Key, int]:
        missing = list({k for k in keys if k not in self.ids})
        if missing:
            if len(self.ids) + len(missing) > self.MAX:
                self.ids.clear()
            if create:
                for chunk in _chunked(missing):
                    conn.execute(
                        f"INSERT OR IGNORE INTO streams (entity_type, entity_id) VALUES {_values(len(chunk), 2)}",
                        list(itertools.chain.from_iterable(chunk)),
                    )
            for chunk in _chunked(missing):
                rows = conn.execute(  # a join: `(type, id) IN (VALUES …)` would scan the table
                    f"SELECT s.entity_type, s.entity_id, s.id FROM (VALUES {_values(len(chunk), 2)}) AS v"
                    " JOIN streams s ON s.entity_type = v.column1 AND s.entity_id = v.column2",
                    list(itertools.chain.from_iterable(chunk)),
                ).fetchall()
                self.ids.update(((t, i), sid) for t, i, sid in rows)
        return self.ids

    def one(self, conn: sqlite3.Connection, key: Key, *, create: bool) -> int | None:
        return self.lookup(conn, [key], create=create).get(key)


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    """Insert rows in order; returns the first position. AUTOINCREMENT gives the next ones in
    order and never below the sequence; we hold the write lock, so nobody else takes any."""
    found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
    for chunk in _chunked(rows):
        conn.execute(
            f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES {_values(len(chunk), 10)}",
            list(itertools.chain.from_iterable(chunk)),
        )
    return (found[0] if found else 0) + 1


def _heads_match(conn: sqlite3.Connection, checks: list[tuple[int, int]]) -> bool:
    """One query: is every stream's head its append's expected seq, and none deleted?"""
    for chunk in _chunked(checks):
        (mismatches,) = conn.execute(
            f"SELECT count(*) FROM (VALUES {_values(len(chunk), 2)}) AS v JOIN streams s ON s.id = v.column1"
            f" WHERE s.deleted != 0 OR {_HEAD} != v.column2",
            list(itertools.chain.from_iterable(chunk)),
        ).fetchone()
        if mismatches:
            return False
    return True


def _append_one(conn: sqlite3.Connection, stream: int, op: _Append) -> int | JournalError:
    """The slow path: check one append on its own and say exactly why it fails."""
    deleted, head = conn.execute(f"SELECT s.deleted, {_HEAD} FROM streams s WHERE s.id=?", (stream,)).fetchone()
    if deleted:
        return EntityDeleted(*op.key)
    if head != op.expected_seq:
        return ConcurrencyConflict(op.key[0], op.key[1], op.expected_seq, head)
    return _insert_events(conn, [(stream, *r) for r in op.rows])


def _write_appends(conn: sqlite3.Connection, streams: _Streams, appends: list[_Append]) -> list[int | JournalError]:
    ids = streams.lookup(conn, [op.key for op in appends], create=True)
    sids = [ids[op.key] for op in appends]
    if len(set(sids)) < len(sids) or not _heads_match(
        conn, [(s, op.expected_seq) for s, op in zip(sids, appends, strict=True)]
    ):
        return [_append_one(conn, s, op) for s, op in zip(sids, appends, strict=True)]
    first = _insert_events(conn, [(s, *r) for s, op in zip(sids, appends, strict=True) for r in op.rows])
    out: list[int | JournalError] = []
    for op in appends:
        out.append(first)
        first += len(op.rows)
    return out


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite://:memory:`; options as query."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    path = (parts.netloc + parts.path) if parts.netloc else parts.path[1:]
    if not path:
        raise ConfigError(f"sqlite URL has no path: {url!r} (try sqlite:///memoir.db)")
    opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, opts


class SqliteJournal(Journal):
    def __init__(self, path: str | Path, *, synchronous: str = "FULL", max_batch: int = 4096) -> None:
        synchronous = synchronous.upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous
        self.url = f"sqlite:///{self.path}?synchronous={synchronous}"
        self._writes: Batcher[_Append | _Op, Any] = Batcher(self._flush_writes, max_batch=max_batch, name="sqlite")
        self._recoveries: Batcher[tuple[str, str], Recovery] = Batcher(
            self._flush_recoveries, max_batch=1024, name="sqlite"
        )
        self._write_limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(1)
        self._streams = _Streams()  # used only by the writer thread
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteJournal:
        path, opts = parse_sqlite_url(url)
        unknown = set(opts) - {"synchronous", "max_batch"}
        if unknown:
            raise ConfigError(f"unknown sqlite URL option(s) {sorted(unknown)} in {url!r}")
        return cls(path, synchronous=opts.get("synchronous", "FULL"), max_batch=int(opts.get("max_batch", 4096)))

    # -- lifecycle ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30, cached_statements=1024
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB
        conn.execute("PRAGMA wal_autocheckpoint=4000")  # checkpoint every ~16 MiB of WAL, not every 4
        return conn

    def _open_sync(self) -> None:
        self._w = self._connect()
        self._w.executescript(_SCHEMA)
        (version,) = self._w.execute("SELECT value FROM memoir_meta WHERE key='schema_version'").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path}: schema version {version} is newer than this Memoir ({SCHEMA_VERSION})")
        self._r = self._connect() if self.path != ":memory:" else self._w

    async def open(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._open_sync)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open sqlite journal {self.path!r}: {exc}") from exc
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._writes.run)
        tg.start_soon(self._recoveries.run)
        stack.callback(self._recoveries.close)
        stack.callback(self._writes.close)
        self._stack = stack

    async def close(self) -> None:
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        await stack.aclose()  # drains both batchers, then leaves the task group

        def shut() -> None:
            for conn in {id(c): c for c in (self._r, self._w) if c is not None}.values():
                conn.close()

        await anyio.to_thread.run_sync(shut)

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn, limiter=self._write_limiter)

    async def _in_reader(self, fn: Callable[[], T]) -> T:
        if self._r is None:
            raise JournalError("the sqlite journal is not open (use `async with journal:`)")
        return await anyio.to_thread.run_sync(fn, limiter=self._read_limiter)

    # -- writes ---------------------------------------------------------------------------------

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        key = check_batch(events, expected_seq)
        first = await self._writes.submit(_Append(key, expected_seq, [row_values(e) for e in events]))
        self._notify_appended()
        return [msgspec.structs.replace(e, position=first + i) for i, e in enumerate(events)]

    async def _flush_writes(self, batch: list[_Append | _Op]) -> list[Any]:
        try:
            return await self._in_writer(functools.partial(self._write_batch, batch))
        except sqlite3.Error as exc:
            raise JournalError(f"sqlite journal {self.path!r}: write failed: {exc}") from exc

    def _write_batch(self, batch: list[_Append | _Op]) -> list[Any]:
        """One transaction for the whole batch; appends and other writes keep their order."""
        conn = self._w
        assert conn is not None
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            run: list[_Append] = []
            for op in batch:
                if isinstance(op, _Append):
                    run.append(op)
                    continue
                if run:
                    results += _write_appends(conn, self._streams, run)
                    run = []
                results.append(op.fn(conn, self._streams))
            if run:
                results += _write_appends(conn, self._streams, run)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self._streams.ids.clear()  # ids created in this transaction are gone
            raise
        return results

    async def _write(self, fn: Callable[[sqlite3.Connection, _Streams], T]) -> T:
        return await self._writes.submit(_Op(fn))  # type: ignore[no-any-return]

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        key = (entity_type, entity_id)

        def run(conn: sqlite3.Connection, streams: _Streams) -> None:
            sid = streams.one(conn, key, create=True)
            (head,) = conn.execute(f"SELECT {_HEAD} FROM streams s WHERE s.id=?", (sid,)).fetchone()
            upto = head if to_seq is None else min(to_seq, head)
            conn.execute("DELETE FROM events WHERE stream=? AND seq<=?", (sid, upto))
            conn.execute("UPDATE streams SET floor=max(floor, ?) WHERE id=?", (upto, sid))
            if to_seq is None:
                conn.execute("DELETE FROM snapshots WHERE stream=?", (sid,))
                conn.execute("UPDATE streams SET deleted=1 WHERE id=?", (sid,))

        await self._write(run)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        s = snapshot

        def run(conn: sqlite3.Connection, streams: _Streams) -> None:
            sid = streams.one(conn, (s.entity_type, s.entity_id), create=True)
            conn.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?,?)", (sid, s.seq, s.recorded_at, s.payload))

        await self._write(run)

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        def run(conn: sqlite3.Connection, streams: _Streams) -> None:
            sid = streams.one(conn, (entity_type, entity_id), create=False)
            if sid is not None:
                conn.execute("DELETE FROM snapshots WHERE stream=? AND seq<=?", (sid, to_seq))

        await self._write(run)

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self._write(lambda c, _: c.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?)", (name, position)))

    # -- reads ------------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        assert self._r is not None
        return self._r.execute(sql, args).fetchall()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return await self._in_reader(functools.partial(self._query, sql, args))
        except sqlite3.Error as exc:
            raise JournalError(f"sqlite journal {self.path!r}: {exc}") from exc

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM event_log WHERE entity_type=? AND entity_id=? AND seq>=? AND seq<=?"
            " ORDER BY seq LIMIT ?",
            entity_type,
            entity_id,
            from_seq,
            to_seq if to_seq is not None else 2**62,
            -1 if limit is None else limit,
        )
        return [envelope_from_row(r) for r in rows]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM event_log WHERE position>=? ORDER BY position LIMIT ?", from_position, limit
        )
        return [envelope_from_row(r) for r in rows]

    async def _stream(self, entity_type: str, entity_id: str) -> tuple[int, int]:
        """(head, deleted) of an entity; (0, 0) if it never existed."""
        rows = await self._fetch(
            f"SELECT {_HEAD}, s.deleted FROM streams s WHERE s.entity_type=? AND s.entity_id=?", entity_type, entity_id
        )
        return (rows[0][0], rows[0][1]) if rows else (0, 0)

    async def head(self, entity_type: str, entity_id: str) -> int:
        return (await self._stream(entity_type, entity_id))[0]

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return bool((await self._stream(entity_type, entity_id))[1])

    async def last_position(self) -> int:
        rows = await self._fetch("SELECT seq FROM sqlite_sequence WHERE name='events'")
        return int(rows[0][0]) if rows else 0

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        rows = await self._fetch(
            "SELECT n.seq, n.recorded_at, n.payload FROM snapshots n JOIN streams s ON s.id = n.stream"
            " WHERE s.entity_type=? AND s.entity_id=? AND n.seq<=? ORDER BY n.seq DESC LIMIT 1",
            entity_type,
            entity_id,
            max_seq if max_seq is not None else 2**62,
        )
        if not rows:
            return None
        seq, recorded_at, payload = rows[0]
        return Snapshot(
            entity_type=entity_type, entity_id=entity_id, seq=seq, recorded_at=recorded_at, payload=bytes(payload)
        )

    async def load_checkpoint(self, name: str) -> int:
        rows = await self._fetch("SELECT position FROM checkpoints WHERE name=?", name)
        return int(rows[0][0]) if rows else 0

    # -- recovery, batched like writes -----------------------------------------------------------

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        return await self._recoveries.submit((entity_type, entity_id))

    async def _flush_recoveries(self, keys: list[Key]) -> list[Recovery | BaseException]:
        try:
            return await self._in_reader(functools.partial(self._recover_batch, keys))
        except sqlite3.Error as exc:
            raise JournalError(f"sqlite journal {self.path!r}: recovery failed: {exc}") from exc

    def _recover_batch(self, keys: list[Key]) -> list[Recovery | BaseException]:
        conn = self._r
        assert conn is not None
        conn.execute("BEGIN")  # one consistent read snapshot for the whole batch
        try:
            streams: dict[Key, tuple[int, int, int]] = {}
            for chunk in _chunked(keys):  # one query finds which entities exist at all, and their heads
                rows = conn.execute(
                    f"SELECT s.entity_type, s.entity_id, s.id, {_HEAD}, s.deleted"
                    f" FROM (VALUES {_values(len(chunk), 2)}) AS v"
                    " JOIN streams s ON s.entity_type = v.column1 AND s.entity_id = v.column2",
                    list(itertools.chain.from_iterable(chunk)),
                ).fetchall()
                streams.update(((t, i), (sid, h, d)) for t, i, sid, h, d in rows)
            return [self._recover_one(conn, key, streams.get(key)) for key in keys]
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _recover_one(conn: sqlite3.Connection, key: Key, stream: tuple[int, int, int] | None) -> Recovery:
        if stream is None:
            return Recovery(None, [], 0)
        sid, head, deleted = stream
        snap = conn.execute(
            "SELECT seq, recorded_at, payload FROM snapshots WHERE stream=? ORDER BY seq DESC LIMIT 1", (sid,)
        ).fetchone()
        snapshot = None
        if snap is not None:
            snapshot = Snapshot(
                entity_type=key[0], entity_id=key[1], seq=snap[0], recorded_at=snap[1], payload=bytes(snap[2])
            )
        rows = conn.execute(
            f"SELECT position, ?, ?, {_INSERT_COLUMNS.removeprefix('stream, ')} FROM events"
            " WHERE stream=? AND seq>? ORDER BY seq",
            (*key, sid, snapshot.seq if snapshot else 0),
        ).fetchall()
        return Recovery(snapshot, [envelope_from_row(r) for r in rows], head, bool(deleted))
