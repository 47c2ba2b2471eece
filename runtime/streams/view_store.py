"""Where views keep their rows, with each view's checkpoints in the same transaction.

A batch of events is applied inside one store transaction that also moves the
view's checkpoint (the last stream sequence applied, per source stream). After
a crash either both landed or neither did, so re-delivered events below the
checkpoint are skipped and each event's effect lands exactly once.

View handlers are pure row updates, so a whole batch runs inside the store's
worker thread with synchronous row access: one thread hop per batch, not per
row read.

The SQLite store runs with `synchronous=NORMAL` by default: a view is derived
data. A process crash loses nothing (WAL); a power loss can only take the last
batches back, rows and checkpoint together, and the view then re-reads them
from its stream. An fsync per batch would buy nothing but view lag.

Faults: a lost PostgreSQL connection or a full disk makes `transact` wait and retry
(one warning when it starts, one info when it is over) rather than fail the view: a
view cannot move past a batch it could not store, and the store recovers by itself.
Reads answer `Unavailable` meanwhile. A PostgreSQL batch whose commit was cut
off may have landed: the retry sees its checkpoint and stores nothing twice.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from ..journal._faults import Link, pg_connection_lost, pg_errors, sqlite_error, sqlite_full
from ..journal._urls import parse_postgres_url, parse_sqlite_url, postgres_where
from ..model.backoff import Backoff
from ..model.errors import ConfigError, JournalError, Unavailable
from ..wire.redact import redact_url
from .query import Index, Kind, Plan, Where, matches, sort_key
from .query_sql import (
    Dialect,
    choose_index,
    count_sql,
    create_index_sql,
    desired,
    index_name,
    postgres_dialect,
    select_sql,
    sqlite_dialect,
)

T = TypeVar("T")

_RETRY_MAX_S = 2.0  # the longest wait between two attempts of a batch while storage is away


async def _until_stored(link: Link, attempt: Callable[[int], Awaitable[None]]) -> None:
    """Run a view batch until storage takes it; `attempt(n)` is told how many attempts failed before."""
    failed, retry = 0, Backoff(0.1, cap=_RETRY_MAX_S)
    while True:
        try:
            await attempt(failed)
        except Unavailable as exc:
            link.lost(exc)
            failed += 1
            await retry.sleep()
            continue
        link.ok()
        return


class RawRows(Protocol):
    """Synchronous row access inside a store transaction (encoded rows)."""

    def get(self, key: str) -> bytes | None: ...


Work = Callable[[RawRows], tuple[Mapping[str, bytes | None], Mapping[str, int]]]
"""Reads rows, returns (rows to write, None meaning delete; checkpoints to set)."""


class ViewStore(abc.ABC):
    """Where views keep their rows; a batch and the view's checkpoint land in one transaction."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:  # optional hook
        pass

    async def close(self) -> None:  # optional hook
        pass

    @abc.abstractmethod
    async def transact(self, view: str, work: Work) -> None:
        """Run `work` with row access, then write its rows and checkpoints atomically."""

    @abc.abstractmethod
    async def checkpoints(self, view: str) -> dict[str, int]:
        """The view's checkpoint per source stream."""

    @abc.abstractmethod
    async def get(self, view: str, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def scan(self, view: str, *, after: str = "", limit: int = 100) -> list[tuple[str, bytes]]:
        """Rows in key order after `after`."""

    @abc.abstractmethod
    async def reset(self, view: str) -> None:
        """Drop the view's rows and checkpoints (before a rebuild)."""

    @abc.abstractmethod
    async def declare(self, view: str, indexes: Sequence[Index]) -> None:
        """Make the view's indexes exactly these: create the ones missing (new, or suspended by a
        catch-up that did not get to build them again), drop the ones no longer declared (a
        changed index is a new one: its name is a digest of its definition)."""

    async def suspend_indexes(self, view: str) -> None:
        """Drop the view's indexes while it catches up into no rows of its own; `declare` builds
        them again, one CREATE INDEX each (PostgreSQL's bulk-load advice: a b-tree built from the
        sorted rows costs less than one entered a row at a time, at random places).

        They stay recorded as declared, so whatever stops the catch-up, the next `declare` (each
        start of the view's runner makes one) sees them missing and builds them: a crash between
        the two leaves a view slower to query, never one without its indexes for good.

        Queries meanwhile run without them: correct, on the rows applied so far, but each reads
        the view's own rows (its primary-key prefix, never other views'). A view catching up
        from empty answers with a part of its rows anyway, and other members of a cluster that
        share a PostgreSQL store could not be told to refuse (the suspension is one process's);
        the fields queried are still only declared ones. The memory store has nothing to drop."""

    @abc.abstractmethod
    async def select(self, view: str, plan: Plan) -> list[tuple[str, bytes]]:
        """One page of a checked query (`query.plan`): rows passing its filter, in its order."""

    @abc.abstractmethod
    async def count(self, view: str, where: Where | None, kinds: Mapping[str, Kind]) -> int:
        """How many rows pass `where` (already checked, in JSON names)."""

    async def scrub(self) -> None:
        """Leave no copy of deleted rows in the store's files (called after a view handled a forget).

        A store that keeps deleted bytes around (a write-ahead log, freed pages) clears them here.
        PostgreSQL cannot promise it: dead tuples and its WAL segments hold old row versions until
        vacuum and WAL recycling, which the database's operator controls (docs: security).
        """


class MemoryViewStore(ViewStore):
    """View rows in dicts, for tests: lost on exit, so views rebuild from their streams."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, bytes]] = {}
        self._checkpoints: dict[str, dict[str, int]] = {}
        self.indexes: dict[str, list[Index]] = {}

    async def transact(self, view: str, work: Work) -> None:
        rows = self.rows.setdefault(view, {})
        writes, checkpoints = work(rows)
        for key, value in writes.items():
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = value
        self._checkpoints.setdefault(view, {}).update(checkpoints)

    async def checkpoints(self, view: str) -> dict[str, int]:
        return dict(self._checkpoints.get(view, {}))

    async def get(self, view: str, key: str) -> bytes | None:
        return self.rows.get(view, {}).get(key)

    async def scan(self, view: str, *, after: str = "", limit: int = 100) -> list[tuple[str, bytes]]:
        rows = self.rows.get(view, {})
        return [(k, rows[k]) for k in sorted(k for k in rows if k > after)][:limit]

    async def reset(self, view: str) -> None:
        self.rows.pop(view, None)
        self._checkpoints.pop(view, None)

    async def declare(self, view: str, indexes: Sequence[Index]) -> None:
        self.indexes[view] = list(indexes)  # nothing to build: queries evaluate in Python

    def _passing(self, view: str, where: Where | None) -> list[tuple[str, dict[str, Any]]]:
        docs = ((k, msgspec.json.decode(v)) for k, v in self.rows.get(view, {}).items())
        return [(k, d) for k, d in docs if matches(where, k, d)]

    async def select(self, view: str, plan: Plan) -> list[tuple[str, bytes]]:
        found = sorted(self._passing(view, plan.where), key=sort_key(plan.order))[: plan.limit]
        rows = self.rows.get(view, {})
        return [(k, rows[k]) for k, _ in found]

    async def count(self, view: str, where: Where | None, kinds: Mapping[str, Kind]) -> int:
        return len(self._passing(view, where))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS view_rows (
    view TEXT NOT NULL, key TEXT NOT NULL, row BLOB NOT NULL, PRIMARY KEY (view, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS view_checkpoints (
    view TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (view, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS view_indexes (
    view TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (view, name)
) WITHOUT ROWID;
"""


_SQLITE_INDEXES = "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='view_rows'"


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken at its start (BEGIN IMMEDIATE), committed, or rolled back on any
    error or cancel (unless SQLite rolled it back itself, as a full disk does)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class _SqliteRows:
    def __init__(self, conn: sqlite3.Connection, view: str) -> None:
        self.conn = conn
        self.view = view

    def get(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT row FROM view_rows WHERE view=? AND key=?", (self.view, key)).fetchone()
        return None if row is None else bytes(row[0])


class SqliteViewStore(ViewStore):
    """`sqlite:///views.db`: rows and checkpoints in one SQLite file (may be the journal's own file).

    The page cache is `cache_mib` (64 MiB; `?cache_mib=` in the URL), not SQLite's 2 MiB: a declared
    index is a second b-tree that each new row enters at a random place, and with a cache smaller than
    the indexes most of those inserts read their page back from the file. The cache fills only as far
    as the store's pages go.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", cache_mib: int = 64) -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self.cache_mib = cache_mib
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._link = Link("SQLite view store", self.path)
        self._indexes: dict[str, list[Index]] = {}  # declared here, for `INDEXED BY`

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA cache_size=-{int(self.cache_mib) * 1024}")  # negative: KiB
        conn.execute("PRAGMA secure_delete=ON")  # a deleted or replaced row's bytes are zeroed, not left in free space
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def open(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._open)
        except (sqlite3.Error, OSError) as exc:
            if sqlite_full(exc):
                raise sqlite_error(exc, f"view store {self.path!r}", "cannot open") from exc
            raise ConfigError(f"cannot open view store {self.path!r}: {exc}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise JournalError("the view store is not open")
        try:
            return await anyio.to_thread.run_sync(fn, conn, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise sqlite_error(exc, f"view store {self.path!r}", "failed") from exc

    async def transact(self, view: str, work: Work) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                writes, checkpoints = work(_SqliteRows(conn, view))
                puts = [(view, k, v) for k, v in writes.items() if v is not None]
                dels = [(view, k) for k, v in writes.items() if v is None]
                if puts:  # an upsert changes a row in place: REPLACE deletes it and inserts it again
                    conn.executemany(
                        "INSERT INTO view_rows VALUES (?,?,?) ON CONFLICT (view, key) DO UPDATE SET row = excluded.row",
                        puts,
                    )
                if dels:
                    conn.executemany("DELETE FROM view_rows WHERE view=? AND key=?", dels)
                conn.executemany(
                    "INSERT INTO view_checkpoints VALUES (?,?,?)"
                    " ON CONFLICT (view, stream) DO UPDATE SET seq = excluded.seq",
                    [(view, s, seq) for s, seq in checkpoints.items()],
                )

        await _until_stored(self._link, lambda _: self._run(run))

    async def scrub(self) -> None:
        """Copy the WAL into the database file and truncate it: its older frames hold rows as they were."""
        await self._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())

    async def checkpoints(self, view: str) -> dict[str, int]:
        rows = await self._run(
            lambda c: c.execute("SELECT stream, seq FROM view_checkpoints WHERE view=?", (view,)).fetchall()
        )
        return dict(rows)

    async def get(self, view: str, key: str) -> bytes | None:
        return await self._run(lambda c: _SqliteRows(c, view).get(key))

    async def scan(self, view: str, *, after: str = "", limit: int = 100) -> list[tuple[str, bytes]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT key, row FROM view_rows WHERE view=? AND key>? ORDER BY key LIMIT ?", (view, after, limit)
            ).fetchall()
        )
        return [(k, bytes(v)) for k, v in rows]

    async def reset(self, view: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with contextlib.closing(conn.cursor()) as cur:
                cur.execute("BEGIN IMMEDIATE")
                cur.execute("DELETE FROM view_rows WHERE view=?", (view,))
                cur.execute("DELETE FROM view_checkpoints WHERE view=?", (view,))
                cur.execute("COMMIT")

        await self._run(run)

    async def declare(self, view: str, indexes: Sequence[Index]) -> None:
        want = desired(view, indexes)

        def run(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                have = {n for (n,) in conn.execute("SELECT name FROM view_indexes WHERE view=?", (view,))}
                built = {n for (n,) in conn.execute(_SQLITE_INDEXES)}
                for name in have - set(want):
                    conn.execute(f"DROP INDEX IF EXISTS {name}")
                    conn.execute("DELETE FROM view_indexes WHERE view=? AND name=?", (view, name))
                for name in set(want) - built:  # new, or recorded and suspended
                    conn.execute(create_index_sql(sqlite_dialect(), "view_rows", view, want[name]))
                for name in set(want) - have:
                    conn.execute("INSERT INTO view_indexes VALUES (?,?)", (view, name))

        await self._run(run)
        self._indexes[view] = list(indexes)

    async def suspend_indexes(self, view: str) -> None:
        """Drop the view's indexes, still recorded (`ViewStore.suspend_indexes`); a query's
        `INDEXED BY` then fails with "no such index" and it runs without the hint."""

        def run(conn: sqlite3.Connection) -> None:
            with _immediate(conn):
                for (name,) in conn.execute("SELECT name FROM view_indexes WHERE view=?", (view,)).fetchall():
                    conn.execute(f"DROP INDEX IF EXISTS {name}")

        await self._run(run)

    def _select(self, view: str, plan: Plan, prefix: str = "") -> Callable[[sqlite3.Connection], list[Any]]:
        """The query with the index that serves it named (`INDEXED BY`), or without if SQLite finds
        no way to use it (then it plans alone)."""
        index = choose_index(plan, self._indexes.get(view, ()))
        d = sqlite_dialect()
        plain = prefix + select_sql(d, "view_rows", view, plan)
        hinted = ""
        if index is not None:
            hint = f" INDEXED BY {index_name(view, index)}"
            hinted = prefix + select_sql(sqlite_dialect(), "view_rows", view, plan, hint)

        def run(conn: sqlite3.Connection) -> list[Any]:
            if hinted:
                try:
                    return conn.execute(hinted, d.params).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no query solution" not in str(exc) and "no such index" not in str(exc):
                        raise
            return conn.execute(plain, d.params).fetchall()

        return run

    async def select(self, view: str, plan: Plan) -> list[tuple[str, bytes]]:
        rows = await self._run(self._select(view, plan))
        return [(k, bytes(v)) for k, v in rows]

    async def count(self, view: str, where: Where | None, kinds: Mapping[str, Kind]) -> int:
        d = sqlite_dialect()
        sql = count_sql(d, "view_rows", view, where, kinds)
        return int(await self._run(lambda c: c.execute(sql, d.params).fetchone()[0]))

    async def explain(self, view: str, plan: Plan) -> str:
        """SQLite's plan of a query, one line per step (tests read it to see the index used)."""
        rows = await self._run(self._select(view, plan, "EXPLAIN QUERY PLAN "))
        return "\n".join(str(r[-1]) for r in rows)


_PG_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.view_rows (
    view TEXT NOT NULL, key TEXT COLLATE "C" NOT NULL, row BYTEA NOT NULL, PRIMARY KEY (view, key)
);  -- keys compare bytewise, as in SQLite, so scans page in the same order everywhere
CREATE TABLE IF NOT EXISTS {s}.view_checkpoints (
    view TEXT NOT NULL, stream TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (view, stream)
);
CREATE TABLE IF NOT EXISTS {s}.view_indexes (
    view TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (view, name)
);
-- a row's bytes as jsonb, for the indexes: immutable (UTF-8 JSON in, jsonb out) so an index may call it
CREATE OR REPLACE FUNCTION {s}.view_doc(r bytea) RETURNS jsonb
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT convert_from(r, 'UTF8')::jsonb $$;
"""


_PG_INDEXES = "SELECT indexname FROM pg_indexes WHERE schemaname=$1 AND tablename='view_rows'"


class _PostgresRows:
    """Row reads from the worker thread that runs a batch's handlers, each a round trip through the
    event loop to asyncpg inside the batch's transaction (`Rows` caches what a batch has read);
    `fetch` reads many in one (the view's runner fetches a batch's rows ahead with it)."""

    def __init__(self, conn: Any, sql: str, many: str, view: str) -> None:
        self.conn = conn
        self.sql = sql
        self.many = many
        self.view = view

    def get(self, key: str) -> bytes | None:
        row = anyio.from_thread.run(self.conn.fetchval, self.sql, self.view, key)
        return None if row is None else bytes(row)

    def fetch(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """The rows of `keys` (None: no such row), in one round trip."""
        wanted = sorted(keys)
        found = anyio.from_thread.run(self.conn.fetch, self.many, self.view, wanted)
        out: dict[str, bytes | None] = dict.fromkeys(wanted)
        out.update({r["key"]: bytes(r["row"]) for r in found})
        return out


class PostgresViewStore(ViewStore):
    """`postgresql://user@host/db?schema=memoir_views`: rows and checkpoints in PostgreSQL.

    A batch is one transaction: the handlers run in a worker thread (they are synchronous, asyncpg
    is not), their row reads fetched ahead in one query where the runner can (`_PostgresRows.fetch`),
    then the rows and the checkpoint are written with one `unnest` statement each. A
    transaction-level advisory lock on the view's name serialises its batches, also between
    processes and between the pull loops of a view with several sources.
    """

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.dsn, self.schema = parse_postgres_url(url)
        self.pool_size = pool_size
        self._pool: Any = None
        self._link = Link("PostgreSQL view store", postgres_where(self.dsn))

    def _sql(self, text: str) -> str:
        return text.replace("{s}", self.schema)

    async def open(self) -> None:
        import asyncpg

        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size, timeout=10)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-ddl-{self.schema}")
                await conn.execute(self._sql(_PG_DDL))
        except (OSError, asyncpg.PostgresError) as exc:
            await self.close()
            raise ConfigError(f"cannot open the view store in schema {self.schema}: {exc}") from exc

    async def close(self) -> None:
        """Close the pool even from a cancelled scope: a goodbye to each connection, shielded and
        bounded, then whatever is left is cut (a dead server must not hold a stopping process)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(5, shield=True):
                await pool.close()
            pool.terminate()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:

        if self._pool is None:
            raise JournalError("the view store is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except pg_errors() as exc:
            if pg_connection_lost(exc):  # the pool replaces the dead connection itself
                raise self._link.error(exc) from exc
            raise JournalError(f"view store (schema {self.schema}): {exc}") from exc

    async def transact(self, view: str, work: Work) -> None:
        await _until_stored(self._link, lambda failed: self._transact(view, work, retry=failed > 0))

    async def _transact(self, view: str, work: Work, *, retry: bool) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-view-{self.schema}-{view}")
            read = self._sql("SELECT row FROM {s}.view_rows WHERE view=$1 AND key=$2")
            many = self._sql("SELECT key, row FROM {s}.view_rows WHERE view=$1 AND key = ANY($2::text[])")
            writes, checkpoints = await anyio.to_thread.run_sync(work, _PostgresRows(conn, read, many, view))
            if retry and checkpoints and await self._landed(conn, view, checkpoints):
                return  # the attempt that lost its connection committed after all
            puts = [(k, v) for k, v in writes.items() if v is not None]
            dels = [k for k, v in writes.items() if v is None]
            if puts:
                await conn.execute(
                    self._sql(
                        "INSERT INTO {s}.view_rows (view, key, row)"
                        " SELECT $1, k, r FROM unnest($2::text[], $3::bytea[]) AS t(k, r)"
                        " ON CONFLICT (view, key) DO UPDATE SET row = EXCLUDED.row"
                    ),
                    view,
                    [k for k, _ in puts],
                    [v for _, v in puts],
                )
            if dels:
                await conn.execute(
                    self._sql("DELETE FROM {s}.view_rows WHERE view=$1 AND key = ANY($2::text[])"), view, dels
                )
            if checkpoints:
                await conn.execute(
                    self._sql(
                        "INSERT INTO {s}.view_checkpoints (view, stream, seq)"
                        " SELECT $1, st, sq FROM unnest($2::text[], $3::bigint[]) AS t(st, sq)"
                        " ON CONFLICT (view, stream) DO UPDATE SET seq = EXCLUDED.seq"
                    ),
                    view,
                    list(checkpoints),
                    list(checkpoints.values()),
                )

    async def _landed(self, conn: Any, view: str, checkpoints: Mapping[str, int]) -> bool:
        rows = await conn.fetch(
            self._sql("SELECT stream, seq FROM {s}.view_checkpoints WHERE view=$1 AND stream = ANY($2::text[])"),
            view,
            list(checkpoints),
        )
        stored = {r["stream"]: r["seq"] for r in rows}
        return all(stored.get(k, 0) >= v for k, v in checkpoints.items())

    async def checkpoints(self, view: str) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(self._sql("SELECT stream, seq FROM {s}.view_checkpoints WHERE view=$1"), view)
        return {r["stream"]: r["seq"] for r in rows}

    async def get(self, view: str, key: str) -> bytes | None:
        async with self._conn() as conn:
            row = await conn.fetchval(self._sql("SELECT row FROM {s}.view_rows WHERE view=$1 AND key=$2"), view, key)
        return None if row is None else bytes(row)

    async def scan(self, view: str, *, after: str = "", limit: int = 100) -> list[tuple[str, bytes]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                self._sql("SELECT key, row FROM {s}.view_rows WHERE view=$1 AND key > $2 ORDER BY key LIMIT $3"),
                view,
                after,
                limit,
            )
        return [(r["key"], bytes(r["row"])) for r in rows]

    async def reset(self, view: str) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-view-{self.schema}-{view}")
            await conn.execute(self._sql("DELETE FROM {s}.view_rows WHERE view=$1"), view)
            await conn.execute(self._sql("DELETE FROM {s}.view_checkpoints WHERE view=$1"), view)

    async def declare(self, view: str, indexes: Sequence[Index]) -> None:
        want = desired(view, indexes)
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-view-{self.schema}-{view}")
            rows = await conn.fetch(self._sql("SELECT name FROM {s}.view_indexes WHERE view=$1"), view)
            have = {r["name"] for r in rows}
            built = {r[0] for r in await conn.fetch(_PG_INDEXES, self.schema)}
            for name in have - set(want):
                await conn.execute(self._sql(f"DROP INDEX IF EXISTS {{s}}.{name}"))
                await conn.execute(self._sql("DELETE FROM {s}.view_indexes WHERE view=$1 AND name=$2"), view, name)
            for name in set(want) - built:  # new, or recorded and suspended
                table = self._sql("{s}.view_rows")
                await conn.execute(create_index_sql(self._dialect(), table, view, want[name]))
            for name in set(want) - have:
                await conn.execute(self._sql("INSERT INTO {s}.view_indexes VALUES ($1, $2)"), view, name)

    async def suspend_indexes(self, view: str) -> None:
        """Drop the view's indexes, still recorded (`ViewStore.suspend_indexes`), under the lock
        its batches take."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-view-{self.schema}-{view}")
            rows = await conn.fetch(self._sql("SELECT name FROM {s}.view_indexes WHERE view=$1"), view)
            for r in rows:
                await conn.execute(self._sql(f"DROP INDEX IF EXISTS {{s}}.{r['name']}"))

    def _dialect(self) -> Dialect:
        return postgres_dialect(self.schema)

    async def select(self, view: str, plan: Plan) -> list[tuple[str, bytes]]:
        d = self._dialect()
        sql = select_sql(d, self._sql("{s}.view_rows"), view, plan)
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *d.params)
        return [(r["key"], bytes(r["row"])) for r in rows]

    async def count(self, view: str, where: Where | None, kinds: Mapping[str, Kind]) -> int:
        d = self._dialect()
        sql = count_sql(d, self._sql("{s}.view_rows"), view, where, kinds)
        async with self._conn() as conn:
            return int(await conn.fetchval(sql, *d.params))

    async def explain(self, view: str, plan: Plan) -> str:
        """PostgreSQL's plan of a query (tests read it to see the index used)."""
        d = self._dialect()
        sql = select_sql(d, self._sql("{s}.view_rows"), view, plan)
        async with self._conn() as conn:
            rows = await conn.fetch("EXPLAIN " + sql, *d.params)
        return "\n".join(r[0] for r in rows)


def open_view_store(url: str) -> ViewStore:
    """Build (not yet open) the store a URL names: memory://, sqlite:///path.db or postgresql://…?schema=name."""
    if url.startswith("memory:"):
        return MemoryViewStore()
    if url.startswith("sqlite:"):
        path, opts = parse_sqlite_url(url)
        try:
            cache_mib = int(opts.get("cache_mib", "64"))
        except ValueError:
            cache_mib = -1
        if not 1 <= cache_mib <= 65536:
            raise ConfigError(
                f"view store URL: cache_mib must be a whole number of MiB from 1 to 65536, not {opts['cache_mib']!r}"
            )
        return SqliteViewStore(path, synchronous=opts.get("synchronous", "NORMAL"), cache_mib=cache_mib)
    if url.startswith(("postgresql:", "postgres:")):
        return PostgresViewStore(url)
    raise ConfigError(
        f"unknown view store URL {redact_url(url)!r}: expected memory://, sqlite:///path.db or postgresql://…?schema=name"
    )


__all__ = ["MemoryViewStore", "RawRows", "SqliteViewStore", "ViewStore", "open_view_store"]
