"""`sqlite:///path.db`: the embedded default journal.

- WAL mode with `synchronous=FULL` by default: an acknowledged append survived
  an fsync, so it survives a power cut, not just a crash of this process.
  `?synchronous=NORMAL` trades the last transactions on power loss for speed.
- Group commit: every write goes through one `Batcher`, and one worker-thread
  call runs the whole batch in one `BEGIN IMMEDIATE … COMMIT` (one fsync).
  Activations are batched the same way on a second, read-only connection, so
  a burst of first commands to a million entities costs few thread hops.
- No SQLite call runs on the event loop.
- Positions are assigned inside the write transaction from a counter row, so
  they are strictly increasing, never reused after deletion, and gap-free in
  commit order; BEGIN IMMEDIATE also makes this safe if a second process
  writes to the same file (the file lock serializes the writers).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import msgspec

from ..envelope import Envelope, Recovery, Snapshot
from ..errors import ConcurrencyConflict, ConfigError, EntityDeleted, JournalError
from .base import Journal, check_batch
from .batching import Batcher

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memoir_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    head INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity_type, entity_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    command_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    reply BLOB,
    payload BLOB NOT NULL,
    UNIQUE (entity_type, entity_id, seq)
);
CREATE TABLE IF NOT EXISTS snapshots (
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (entity_type, entity_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
INSERT OR IGNORE INTO memoir_meta VALUES ('schema_version', 1), ('position', 0);
"""

_COLUMNS = (
    "position, entity_type, entity_id, seq, name, version, recorded_at,"
    " command_id, correlation_id, causation_id, reply, payload"
)
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"


def _row(env: Envelope, position: int) -> tuple[Any, ...]:
    return (
        position,
        env.entity_type,
        env.entity_id,
        env.seq,
        env.name,
        env.version,
        env.recorded_at,
        env.command_id,
        env.correlation_id,
        env.causation_id,
        env.reply,
        env.payload,
    )


def _envelope(r: tuple[Any, ...]) -> Envelope:
    return Envelope(
        position=r[0],
        entity_type=r[1],
        entity_id=r[2],
        seq=r[3],
        name=r[4],
        version=r[5],
        recorded_at=r[6],
        command_id=r[7],
        correlation_id=r[8],
        causation_id=r[9],
        reply=r[10],
        payload=bytes(r[11]) if r[11] is not None else b"",
    )


# -- write operations, carried out by the batch writer -------------------------------------


class _Append(msgspec.Struct):
    events: Sequence[Envelope]
    expected_seq: int


class _Op(msgspec.Struct):
    """Any other write: a bound method that runs inside the batch's transaction."""

    fn: Callable[[sqlite3.Connection], Any]


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
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB
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
        check_batch(events, expected_seq)
        return await self._writes.submit(_Append(events, expected_seq))  # type: ignore[no-any-return]

    async def _flush_writes(self, batch: list[_Append | _Op]) -> list[Any]:
        try:
            return await self._in_writer(functools.partial(self._write_batch, batch))
        except sqlite3.Error as exc:
            raise JournalError(f"sqlite journal {self.path!r}: write failed: {exc}") from exc

    def _write_batch(self, batch: list[_Append | _Op]) -> list[Any]:
        conn = self._w
        assert conn is not None
        results: list[Any] = []
        rows: list[tuple[Any, ...]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            (position,) = conn.execute("SELECT value FROM memoir_meta WHERE key='position'").fetchone()
            for op in batch:
                if isinstance(op, _Op):
                    results.append(op.fn(conn))
                    continue
                failure = self._claim(conn, op)
                if failure is not None:
                    results.append(failure)
                    continue
                stored = []
                for env in op.events:
                    position += 1
                    rows.append(_row(env, position))
                    stored.append(msgspec.structs.replace(env, position=position))
                results.append(stored)
            if rows:
                conn.executemany(_INSERT, rows)
                conn.execute("UPDATE memoir_meta SET value=? WHERE key='position'", (position,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _claim(conn: sqlite3.Connection, op: _Append) -> JournalError | None:
        """The optimistic check: move the entity's head from expected_seq to the new seq, or say why not."""
        first = op.events[0]
        key = (first.entity_type, first.entity_id)
        new_head = op.expected_seq + len(op.events)
        if op.expected_seq == 0:
            cur = conn.execute("INSERT OR IGNORE INTO streams (entity_type, entity_id, head) VALUES (?,?,?)",
                               (*key, new_head))
        else:
            cur = conn.execute(
                "UPDATE streams SET head=? WHERE entity_type=? AND entity_id=? AND head=? AND deleted=0",
                (new_head, *key, op.expected_seq),
            )
        if cur.rowcount == 1:
            return None
        row = conn.execute("SELECT head, deleted FROM streams WHERE entity_type=? AND entity_id=?", key).fetchone()
        if row is not None and row[1]:
            return EntityDeleted(*key)
        return ConcurrencyConflict(key[0], key[1], op.expected_seq, row[0] if row else 0)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writes.submit(_Op(fn))  # type: ignore[no-any-return]

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        key = (entity_type, entity_id)

        def run(conn: sqlite3.Connection) -> None:
            if to_seq is None:
                conn.execute("DELETE FROM events WHERE entity_type=? AND entity_id=?", key)
                conn.execute("DELETE FROM snapshots WHERE entity_type=? AND entity_id=?", key)
                conn.execute(
                    "INSERT INTO streams (entity_type, entity_id, head, deleted) VALUES (?,?,0,1)"
                    " ON CONFLICT DO UPDATE SET deleted=1",
                    key,
                )
            else:
                conn.execute("DELETE FROM events WHERE entity_type=? AND entity_id=? AND seq<=?", (*key, to_seq))

        await self._write(run)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        s = snapshot
        row = (s.entity_type, s.entity_id, s.seq, s.recorded_at, s.payload)
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?,?,?)", row))

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        args = (entity_type, entity_id, to_seq)
        await self._write(
            lambda c: c.execute("DELETE FROM snapshots WHERE entity_type=? AND entity_id=? AND seq<=?", args)
        )

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?)", (name, position)))

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
            f"SELECT {_COLUMNS} FROM events WHERE entity_type=? AND entity_id=? AND seq>=? AND seq<=?"
            " ORDER BY seq LIMIT ?",
            entity_type, entity_id, from_seq, to_seq if to_seq is not None else 2**62, -1 if limit is None else limit,
        )
        return [_envelope(r) for r in rows]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE position>=? ORDER BY position LIMIT ?", from_position, limit
        )
        return [_envelope(r) for r in rows]

    async def head(self, entity_type: str, entity_id: str) -> int:
        rows = await self._fetch("SELECT head FROM streams WHERE entity_type=? AND entity_id=?", entity_type, entity_id)
        return rows[0][0] if rows else 0

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        rows = await self._fetch("SELECT deleted FROM streams WHERE entity_type=? AND entity_id=?", entity_type, entity_id)
        return bool(rows and rows[0][0])

    async def last_position(self) -> int:
        rows = await self._fetch("SELECT value FROM memoir_meta WHERE key='position'")
        return int(rows[0][0])

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        rows = await self._fetch(
            "SELECT seq, recorded_at, payload FROM snapshots WHERE entity_type=? AND entity_id=? AND seq<=?"
            " ORDER BY seq DESC LIMIT 1",
            entity_type, entity_id, max_seq if max_seq is not None else 2**62,
        )
        if not rows:
            return None
        seq, recorded_at, payload = rows[0]
        return Snapshot(entity_type=entity_type, entity_id=entity_id, seq=seq, recorded_at=recorded_at,
                        payload=bytes(payload))

    async def load_checkpoint(self, name: str) -> int:
        rows = await self._fetch("SELECT position FROM checkpoints WHERE name=?", name)
        return int(rows[0][0]) if rows else 0

    # -- recovery, batched like writes -----------------------------------------------------------

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        return await self._recoveries.submit((entity_type, entity_id))

    async def _flush_recoveries(self, keys: list[tuple[str, str]]) -> list[Recovery | BaseException]:
        return await self._in_reader(functools.partial(self._recover_batch, keys))

    def _recover_batch(self, keys: list[tuple[str, str]]) -> list[Recovery | BaseException]:
        conn = self._r
        assert conn is not None
        out: list[Recovery | BaseException] = []
        conn.execute("BEGIN")  # one consistent read snapshot for the whole batch
        try:
            for key in keys:
                try:
                    out.append(self._recover_one(conn, key))
                except sqlite3.Error as exc:
                    out.append(JournalError(f"cannot recover {key[0]}/{key[1]}: {exc}"))
        finally:
            conn.execute("COMMIT")
        return out

    @staticmethod
    def _recover_one(conn: sqlite3.Connection, key: tuple[str, str]) -> Recovery:
        stream = conn.execute("SELECT head, deleted FROM streams WHERE entity_type=? AND entity_id=?", key).fetchone()
        if stream is None:
            return Recovery(None, [], 0)
        head, deleted = stream
        snap = conn.execute(
            "SELECT seq, recorded_at, payload FROM snapshots WHERE entity_type=? AND entity_id=?"
            " ORDER BY seq DESC LIMIT 1",
            key,
        ).fetchone()
        snapshot = None
        after = 0
        if snap is not None:
            after = snap[0]
            snapshot = Snapshot(entity_type=key[0], entity_id=key[1], seq=snap[0], recorded_at=snap[1],
                                payload=bytes(snap[2]))
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE entity_type=? AND entity_id=? AND seq>? ORDER BY seq",
            (*key, after),
        ).fetchall()
        return Recovery(snapshot, [_envelope(r) for r in rows], head, bool(deleted))

