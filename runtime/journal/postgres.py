"""`postgresql://user@host:port/db?schema=memoir`: the journal on PostgreSQL (asyncpg).

- Group commit: every write goes through one `Batcher`; a batch is one transaction of a
  handful of round trips whatever its size (the statements are shared with SQLite, in
  _sql.py: rows travel as arrays through `unnest`), on one writer connection.
- Positions safe for tailers. A sequence would hand out numbers in call order but
  transactions commit in another, so a reader of "everything after P" could pass a row
  that commits later with a lower number. Instead each batch takes the row lock on the
  `position` counter first, which serializes writers (of every process) from that point to
  their commit: positions are assigned in commit order and a tailer never skips one. With
  group commit one writer transaction at a time is not the bottleneck, and it also makes
  the optimistic seq check and the command-id check authoritative without per-entity locks.
- Command ids are remembered forever (until the entity is deleted), in `commands`: a
  repeat raises `DuplicateCommand`, whichever process wrote the first one.
- Connections are replaceable: when the writer's connection is lost (a failover, a pooler
  restart, `pg_terminate_backend`), the batch in flight fails with
  `JournalUnavailable("connection lost")` (it may or may not have committed; a retry with
  the same command id is safe) and the next batch reconnects, with a short backoff. Reads
  go through a pool, which replaces dead connections itself.
- Schema created on first use inside its own PostgreSQL schema, versioned in `memoir_meta`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import anyio

from ..model.envelope import Recovery
from ..model.errors import JournalError
from ._faults import Link, pg_connection_lost, pg_errors
from ._sql import Append, Dialect, Op, Rows, SqlJournal, drive_async, migrate, recover_steps
from ._urls import parse_postgres_url, postgres_where

__all__ = ["PostgresJournal", "dialect", "parse_postgres_url"]

Key = tuple[str, str]


def dialect(schema: str) -> Dialect:
    return Dialect(
        name="postgres",
        prefix=f"{schema}.",
        greatest="greatest",
        least="least",
        types={
            "int": "bigint",
            "serial": "bigserial",
            "position": "bigint",
            "autoincrement": "",
            "bool": "boolean",
            "blob": "bytea",
            "without_rowid": "",
        },
        numbered=True,
        chunk=0,
        take_position="SELECT value FROM {s}memoir_meta WHERE key='position' FOR UPDATE",
        keep_position="UPDATE {s}memoir_meta SET value=? WHERE key='position'",
        first_command=(
            "INSERT INTO {s}commands SELECT DISTINCT ON (stream, command_id) stream, command_id, seq, reply"
            " FROM {s}events WHERE command_id IS NOT NULL ORDER BY stream, command_id, reply IS NULL, seq"
            " ON CONFLICT DO NOTHING"
        ),
    )


_DDL = "CREATE SCHEMA IF NOT EXISTS {s};" + dialect("{s}").ddl()  # `.format(s=schema)`; also for tools


class PostgresJournal(SqlJournal):
    """The journal in a PostgreSQL schema, for several processes on one database (see the module docstring)."""

    def __init__(self, url: str, *, max_batch: int = 4096, pool_size: int = 4) -> None:
        self.dsn, self.schema = parse_postgres_url(url)
        super().__init__(dialect(self.schema), max_batch=max_batch)
        where = postgres_where(self.dsn)
        self.url = f"postgresql://{where}?schema={self.schema}"
        self.pool_size = pool_size
        self._writer: Any = None
        self._pool: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._link = Link("PostgreSQL journal", where)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        import asyncpg

        try:
            self._writer = await asyncpg.connect(self.dsn, timeout=10)
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size, timeout=10)
            async with self._writer.transaction():
                await self._writer.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-ddl-{self.schema}")
                await self._writer.execute(_DDL.format(s=self.schema))
                await drive_async(self._execute, migrate(self.dialect, f"schema {self.schema}"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, JournalError) as exc:
            await self._close_connections()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(f"cannot open PostgreSQL journal at {self._link.where}: {exc}") from exc
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._writes.run)
        stack.callback(self._writes.close)
        self._stack = stack

    async def _close_connections(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(5, shield=True):
                await pool.close()
            pool.terminate()
        await self._drop_writer()

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.terminate()  # it may be dead: never wait on a goodbye

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        await self._close_connections()

    # -- writes ----------------------------------------------------------------------------------

    async def _execute(self, sql: str, args: Sequence[Any]) -> Rows:
        return await self._writer.fetch(sql, *args)  # type: ignore[no-any-return]

    async def _connection(self) -> Any:
        """The writer connection, reconnected after a loss (not more often than the backoff allows)."""
        import asyncpg

        if self._writer is not None and not self._writer.is_closed():
            return self._writer
        await self._drop_writer()
        if not self._link.may_retry():
            raise self._link.error()
        try:
            self._writer = await asyncpg.connect(self.dsn, timeout=5)
        except pg_errors() as exc:
            raise self._link.lost(exc) from exc
        return self._writer

    async def _flush(self, batch: list[Append | Op]) -> list[Any]:

        conn = await self._connection()
        try:
            async with conn.transaction():
                results = await drive_async(self._execute, self._batch(batch))
        except pg_errors() as exc:
            self._forget_streams()
            if pg_connection_lost(exc) or conn.is_closed():
                await self._drop_writer()
                raise self._link.lost(exc) from exc
            raise JournalError(f"PostgreSQL journal at {self._link.where}: write failed: {exc}") from exc
        self._link.ok()
        return results

    # -- reads -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reading(self, doing: str) -> Any:

        if self._pool is None:
            raise JournalError("the PostgreSQL journal is not open (use `async with journal:`)")
        try:
            yield self._pool
        except pg_errors() as exc:
            if pg_connection_lost(exc):
                raise self._link.error(exc) from exc  # the pool replaces the dead connection itself
            raise JournalError(f"PostgreSQL journal at {self._link.where}: {doing}: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> Rows:
        async with self._reading("read failed") as pool:
            return await pool.fetch(sql, *args)  # type: ignore[no-any-return]

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        """One repeatable-read transaction: the snapshot, the events after it, and the head agree."""
        async with (
            self._reading(f"cannot recover {entity_type}/{entity_id}") as pool,
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):

            async def execute(sql: str, args: Sequence[Any]) -> Rows:
                return await conn.fetch(sql, *args)  # type: ignore[no-any-return]

            (recovery,) = await drive_async(execute, recover_steps(self.dialect, [(entity_type, entity_id)]))
            return recovery
