"""`sqlite:///path.db`: the embedded default journal.

- WAL mode with `synchronous=FULL` by default: an acknowledged append survived
  an fsync, so it survives a power cut, not just a crash of this process.
  `?synchronous=NORMAL` trades the last transactions on power loss for speed.
- Group commit: every write goes through one `ThreadBatcher`, whose writer thread
  runs each batch in one `BEGIN IMMEDIATE … COMMIT` (one fsync) and takes the next
  as soon as it committed, without waiting for the event loop in between.
  Recoveries are batched the same way on a second connection, so a burst of
  first commands to many entities costs few thread hops. No SQLite call runs
  on the event loop. The statements themselves are shared with PostgreSQL (_sql.py).
- Compact rows: an entity's (type, id) is stored once, in `streams`, and events
  refer to it by integer. The `event_log` view joins them back for ad-hoc SQL.
- Positions are assigned inside the exclusive write transaction from the
  AUTOINCREMENT sequence: strictly increasing, never reused after deletion,
  visible in commit order. BEGIN IMMEDIATE also serializes a second writing process.
- An entity's head is the larger of its highest stored seq and `floor`, the
  highest seq ever deleted, so deletion never lets a seq be reused.
- Command ids are remembered forever (until the entity is deleted), in `commands`,
  checked inside the batch's transaction: a repeat raises `DuplicateCommand`.
- The WAL checkpoint is off the commit path: a thread of its own copies the WAL back
  into the file while the writer goes on committing, and the writer checkpoints (and waits)
  only if the WAL passes a hard limit (see `_checkpoint.py`).
- A full disk (SQLITE_FULL, ENOSPC) raises `Unavailable("storage full")`: the
  transaction is rolled back, the writer stays up, and the first write that succeeds
  afterwards checkpoints the WAL so it shrinks back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..model.envelope import Recovery
from ..model.errors import ConfigError, JournalError
from ._batching import Batcher, ThreadBatcher
from ._checkpoint import HARD, SOFT, Checkpointer
from ._faults import sqlite_error, sqlite_full
from ._sql import TYPE_INDEX, TYPE_TRIGGER, Append, Dialect, Op, Rows, SqlJournal, drive_sync, migrate, recover_steps
from ._urls import parse_sqlite_url
from .keys import KeyStore
from .sql_keys import SqlKeyStore

T = TypeVar("T")
Key = tuple[str, str]

DIALECT = Dialect(
    name="sqlite",
    prefix="",
    greatest="max",
    least="min",
    types={
        "int": "INTEGER",
        "serial": "INTEGER",  # exactly INTEGER PRIMARY KEY: the rowid
        "position": "INTEGER",
        "autoincrement": " AUTOINCREMENT",
        "bool": "INTEGER",
        "blob": "BLOB",
        "without_rowid": " WITHOUT ROWID",
    },
    numbered=False,
    # 400 events of 13 columns per INSERT: each distinct row count is a statement of its own in the
    # connection's cache, and a multi-row one is big (hundreds of kB at this size), so not more;
    # lowered at open where a build allows fewer variables (999 before SQLite 3.32)
    max_variables=5_200,
    take_position=(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='events'), 0),"
        " (SELECT data_version FROM pragma_data_version)"
    ),
    keep_position=None,  # an explicit rowid above the sequence moves it
    first_command=(
        "INSERT OR IGNORE INTO commands SELECT stream, command_id, seq, reply FROM events"
        " WHERE command_id IS NOT NULL ORDER BY stream, command_id, reply IS NULL, seq"
    ),
    has_column="SELECT count(*) FROM pragma_table_info(?) WHERE name=?",
    type_fill=(
        TYPE_INDEX,
        f"CREATE TRIGGER IF NOT EXISTS {TYPE_TRIGGER} AFTER INSERT ON events WHEN NEW.entity_type IS NULL BEGIN"
        " UPDATE events SET entity_type = (SELECT entity_type FROM streams WHERE id = NEW.stream)"
        " WHERE position = NEW.position; END",
    ),
)
_LAST_POSITION = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='events'), 0)"

_EVENT_LOG = """
CREATE VIEW IF NOT EXISTS event_log AS
    SELECT e.position, s.entity_type, s.entity_id, e.seq, e.name, e.version, e.recorded_at,
           e.command_id, e.correlation_id, e.causation_id, e.reply, e.payload, e.principal
    FROM events e JOIN streams s ON s.id = e.stream;
"""


_SCHEMA = DIALECT.ddl() + _EVENT_LOG  # the whole schema as one script, also for tools (benchmarks)


class SqliteJournal(SqlJournal):
    """The embedded default: one SQLite file in WAL mode, group-committed (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_batch: int = 4096,
        wal_checkpoint_at: int = SOFT,
        wal_limit: int = HARD,
    ) -> None:
        """`wal_checkpoint_at`: the WAL size in bytes from which a thread checkpoints it;
        `wal_limit`: the size from which the writer checkpoints it and waits (the WAL's bound)."""
        synchronous = synchronous.upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        super().__init__(DIALECT, max_batch=max_batch)
        self.path = str(path)
        self.synchronous = synchronous
        self.url = f"sqlite:///{self.path}?synchronous={synchronous}"
        self._recoveries: Batcher[Key, Recovery] = Batcher(self._flush_recoveries, max_batch=1024, name="sqlite")
        self._writes = ThreadBatcher(self._write_in_thread, max_batch=max_batch, name="sqlite")
        self._write_limiter = anyio.CapacityLimiter(1)
        self._w_lock = threading.Lock()  # the write connection: the writer thread, and `after_erase`
        self._read_limiter = anyio.CapacityLimiter(1)
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._was_full = False  # a write failed for space: checkpoint the WAL after the next one that works
        self._checkpointer = Checkpointer(self.path, self._connect, soft=wal_checkpoint_at, hard=wal_limit)

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
        self._checkpointer.setup_writer(conn)  # no checkpoint on commit: the checkpoint thread's
        return conn

    def _open_sync(self) -> None:
        self._w = conn = self._connect()
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        if limit < self.dialect.max_variables:  # an SQLite built with a lower limit (999 before 3.32)
            self.dialect = dataclasses.replace(self.dialect, max_variables=limit)
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            drive_sync(self._execute, migrate(self.dialect, self.path))
            view = conn.execute("SELECT count(*) FROM pragma_table_info('event_log') WHERE name='principal'")
            if not view.fetchone()[0]:
                conn.execute("DROP VIEW IF EXISTS event_log")  # made before the column: show it too
                conn.execute(_EVENT_LOG)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a WAL left large by a full disk shrinks back
        self._r = self._connect() if self.path != ":memory:" else conn

    async def open(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._open_sync)
        except (sqlite3.Error, OSError) as exc:
            await anyio.to_thread.run_sync(self._shut)
            if sqlite_full(exc):
                raise sqlite_error(exc, f"sqlite journal {self.path!r}", "cannot open") from exc
            raise JournalError(f"cannot open sqlite journal {self.path!r}: {exc}") from exc
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._writes.run)
        tg.start_soon(self._recoveries.run)
        if self.path != ":memory:":
            tg.start_soon(self._checkpointer.run)
            stack.callback(self._checkpointer.stop)
        stack.callback(self._recoveries.close)
        stack.callback(self._writes.close)
        self._stack = stack

    def _shut(self) -> None:
        for conn in {id(c): c for c in (self._r, self._w) if c is not None}.values():
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._r = self._w = None

    async def close(self) -> None:
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        await stack.aclose()  # drains both batchers, then leaves the task group
        await anyio.to_thread.run_sync(self._shut)

    # -- writes ---------------------------------------------------------------------------------

    def _execute(self, sql: str, args: Sequence[Any]) -> Rows:
        assert self._w is not None
        return self._w.execute(sql, args).fetchall()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """SQLite may already have rolled back (a full disk does): then there is nothing to undo."""
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _write_in_thread(self, batch: list[Append | Op]) -> list[Any]:
        """The writer thread's flush (see `ThreadBatcher`)."""
        try:
            return self._write_batch(batch)
        except (sqlite3.Error, OSError) as exc:
            raise sqlite_error(exc, f"sqlite journal {self.path!r}", "write failed") from exc

    async def _flush(self, batch: list[Append | Op]) -> list[Any]:
        """A batch from the event loop, through a worker thread (writes go by `_write_in_thread`)."""
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(self._write_batch, batch), limiter=self._write_limiter
            )
        except (sqlite3.Error, OSError) as exc:
            raise sqlite_error(exc, f"sqlite journal {self.path!r}", "write failed") from exc

    def _write_batch(self, batch: list[Append | Op]) -> list[Any]:
        """One transaction for the whole batch; appends and other writes keep their order."""
        with self._w_lock:
            return self._write_batch_locked(batch)

    def _write_batch_locked(self, batch: list[Append | Op]) -> list[Any]:
        conn = self._w
        if conn is None:
            raise JournalError("the sqlite journal is not open (use `async with journal:`)")
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = drive_sync(self._execute, self._batch(batch))
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            self._forget_streams()
            self._was_full = self._was_full or sqlite_full(exc)
            raise
        self._checkpointer.committed(conn)
        if self._was_full:  # space is back: let the WAL the full disk left behind shrink
            self._was_full = False
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return results

    def _make_key_store(self) -> KeyStore:
        return SqlKeyStore(write=self._write, query=self._query, after_erase=self.after_erase)

    async def after_erase(self) -> None:
        """Fold the WAL into the file and truncate it: old frames would still hold an erased key."""

        def truncate() -> None:
            with self._w_lock:
                if self._w is not None:
                    self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        try:
            await anyio.to_thread.run_sync(truncate, limiter=self._write_limiter)
        except (sqlite3.Error, OSError) as exc:
            raise sqlite_error(exc, f"sqlite journal {self.path!r}", "WAL checkpoint failed") from exc

    # -- reads ------------------------------------------------------------------------------------

    async def _in_reader(self, fn: Callable[[], T], doing: str) -> T:
        if self._r is None:
            raise JournalError("the sqlite journal is not open (use `async with journal:`)")
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._read_limiter)
        except (sqlite3.Error, OSError) as exc:
            raise sqlite_error(exc, f"sqlite journal {self.path!r}", doing) from exc

    def _read(self, sql: str, args: Sequence[Any]) -> Rows:
        assert self._r is not None
        return self._r.execute(sql, args).fetchall()

    async def _fetch(self, sql: str, *args: Any) -> Rows:
        return await self._in_reader(functools.partial(self._read, sql, args), "read failed")

    def _read_after_bound(self, sql: str, args: Sequence[Any]) -> tuple[int, Rows]:
        bound = self._read(_LAST_POSITION, ())[0][0]  # its own statement: the rows' snapshot is later
        return int(bound), self._read(sql, args)

    async def _typed_rows(self, sql: str, args: Sequence[Any]) -> tuple[int, Rows]:
        """The bound and the rows in one trip to the reader thread."""
        return await self._in_reader(
            functools.partial(self._read_after_bound, self.dialect.sql(sql), args), "read failed"
        )

    # -- recovery, batched like writes -----------------------------------------------------------

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        return await self._recoveries.submit((entity_type, entity_id))

    async def _flush_recoveries(self, keys: list[Key]) -> list[Recovery | BaseException]:
        return await self._in_reader(functools.partial(self._recover_batch, keys), "recovery failed")

    def _recover_batch(self, keys: list[Key]) -> list[Recovery | BaseException]:
        conn = self._r
        assert conn is not None
        conn.execute("BEGIN")  # one consistent read snapshot for the whole batch
        try:
            return list(drive_sync(self._read, recover_steps(self.dialect, keys)))
        finally:
            conn.execute("COMMIT")
