"""`postgresql://user@host:port/db?schema=memoir`: the journal on PostgreSQL (asyncpg).

- Group commit: every write goes through one `Batcher`, on one writer connection. A batch of
  appends is one round trip: one prepared statement calling `memoir_append` (see
  `_APPEND_FUNCTION`), rows as arrays through `unnest`, checked against the heads this writer
  remembers. Any other batch, or one whose assumptions another writer broke, is one
  transaction of a handful of round trips whatever its size (the statements shared with
  SQLite, in _sql.py).
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
  `Unavailable("connection lost")` (it may or may not have committed; a retry with
  the same command id is safe) and the next batch reconnects, with a short backoff. Reads
  go through a pool, which replaces dead connections itself.
- Tailers in other processes wake on commit: each append transaction notifies the schema's
  channel and every instance LISTENs on a connection of its own (_pg_listen.py), so an idle
  process polls only every `idle_poll` seconds, and a busy one hears of appends at once. The
  notification carries the transaction's last position, so a read past the highest position
  known committed is answered empty without a query (a tailer at the tail, under load: its
  next events are not written yet) while listening, and for `idle_poll` seconds after the last
  read that did ask: a writer that does not notify (an older Memoir) is found that late. The
  notification also names the transaction's entity types, so a read of other types
  (`read_types`: a publisher partition, a view) is answered "nothing new" without a query,
  except while this instance's own append of those types is in flight or ended in doubt, and
  once every `idle_poll` seconds (an unheard writer's events are found that late; the read moves
  on only by asking, never past a position it did not see).
- Schema created on first use inside its own PostgreSQL schema, versioned in `memoir_meta`.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeGuard

import anyio
from anyio.abc import TaskGroup

from ..model.envelope import Envelope, Recovery
from ..model.errors import Conflict, EntityDeleted, JournalError
from ._faults import Link, pg_connection_lost, pg_errors
from ._pg_listen import AppendListener, channel_for
from ._sql import (
    TYPE_INDEX,
    TYPE_TRIGGER,
    Append,
    Dialect,
    Op,
    Rows,
    SqlJournal,
    StreamIds,
    decide,
    drive_async,
    migrate,
    recover_steps,
)
from ._urls import parse_postgres_url, postgres_where
from .base import Page, Selection
from .keys import KeyStore
from .sql_keys import SqlKeyStore

__all__ = ["PostgresJournal", "dialect", "parse_postgres_url"]

Key = tuple[str, str]

_CLOSE_TIMEOUT = 10.0  # seconds for close() to land the batches in flight before it cuts them off


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
        max_variables=0,
        take_position="SELECT value, NULL FROM {s}memoir_meta WHERE key='position' FOR UPDATE",
        keep_position="UPDATE {s}memoir_meta SET value=? WHERE key='position'",
        first_command=(
            "INSERT INTO {s}commands SELECT DISTINCT ON (stream, command_id) stream, command_id, seq, reply"
            " FROM {s}events WHERE command_id IS NOT NULL ORDER BY stream, command_id, reply IS NULL, seq"
            " ON CONFLICT DO NOTHING"
        ),
        has_column="SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(?) AND attname = ? AND attnum > 0"
        " AND NOT attisdropped",
        type_fill=(
            "CREATE OR REPLACE FUNCTION {s}memoir_event_type() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"
            " NEW.entity_type := (SELECT entity_type FROM {s}streams WHERE id = NEW.stream); RETURN NEW; END $f$",
            "DO $d$ BEGIN"
            " IF to_regclass('{s}events_type_position') IS NULL THEN " + TYPE_INDEX + "; END IF;"
            " IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{s}events'::regclass"
            f" AND tgname = '{TYPE_TRIGGER}') THEN CREATE TRIGGER {TYPE_TRIGGER} BEFORE INSERT ON {{s}}events"
            " FOR EACH ROW WHEN (NEW.entity_type IS NULL) EXECUTE FUNCTION {s}memoir_event_type(); END IF;"
            " END $d$",
        ),
    )


# A batch of appends as one statement, in its own implicit transaction: one round trip. The writer
# decides every append's fate in Python (`decide`, as in the general path) from the heads its own
# transactions left and the assumption that none of the command ids is stored yet. The function takes
# the position counter's lock, checks that the writer's assumptions still hold, and only then stores
# the rows, at positions after the counter's value, which it returns. Else it writes nothing and
# returns NULL, and the writer runs the batch the general way. VOLATILE: after the lock, each statement
# in it has a fresh snapshot (READ COMMITTED), so it sees every writer that held the lock before it.
#
# The check costs index probes only where an index would not catch it anyway. An accepted append
# inserts seq head+1 and its (stream, command id): if another writer appended to that entity since,
# seq head+1 exists (seqs are contiguous above the floor, and heads never go down), and if the id is
# stored its row exists, so the unique constraints refuse the insert. What they cannot see is checked
# first: every entity's deleted flag and floor (its streams row), and for an entity with a refused
# append (a conflict, or deleted) its full head and the refused append's command id.
_APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION {s}.memoir_append(
    h_stream bigint[], h_head bigint[], h_deleted boolean[], h_refused boolean[], c_stream bigint[], c_id text[],
    e_stream bigint[], e_seq bigint[], e_name text[], e_version int[], e_recorded_at bigint[],
    e_command_id text[], e_correlation_id text[], e_causation_id text[], e_reply bytea[], e_payload bytea[],
    e_principal text[], e_entity_type text[], k_stream bigint[], k_id text[], k_seq bigint[], k_reply bytea[]
) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $f$
DECLARE
    last bigint;
BEGIN
    SELECT value INTO last FROM {s}.memoir_meta WHERE key = 'position' FOR UPDATE;
    IF EXISTS (
        SELECT 1 FROM unnest(h_stream, h_head, h_deleted, h_refused) AS v(id, head, deleted, refused)
        LEFT JOIN {s}.streams s ON s.id = v.id
        WHERE s.id IS NULL OR s.deleted <> v.deleted OR s.floor > v.head
            OR (v.refused AND coalesce((SELECT max(seq) FROM {s}.events WHERE stream = s.id), 0) > v.head)
    ) OR EXISTS (
        SELECT 1 FROM unnest(c_stream, c_id) AS v(stream, command_id)
        JOIN {s}.commands c ON c.stream = v.stream AND c.command_id = v.command_id
    ) THEN
        RETURN NULL;
    END IF;
    BEGIN
        INSERT INTO {s}.events (position, stream, seq, name, version, recorded_at, command_id, correlation_id,
            causation_id, reply, payload, principal, entity_type)
        SELECT last + u.p, u.stream, u.seq, u.name, u.version, u.recorded_at, u.command_id, u.correlation_id,
            u.causation_id, u.reply, u.payload, u.principal, u.entity_type
        FROM unnest(e_stream, e_seq, e_name, e_version, e_recorded_at, e_command_id, e_correlation_id,
            e_causation_id, e_reply, e_payload, e_principal, e_entity_type) WITH ORDINALITY AS u(stream, seq, name,
            version, recorded_at, command_id, correlation_id, causation_id, reply, payload, principal, entity_type, p);
        INSERT INTO {s}.commands (stream, command_id, seq, reply)
        SELECT * FROM unnest(k_stream, k_id, k_seq, k_reply);
    EXCEPTION WHEN unique_violation THEN  -- another writer appended to one of the entities, or stored an id
        RETURN NULL;
    END;
    IF cardinality(e_stream) > 0 THEN
        UPDATE {s}.memoir_meta SET value = last + cardinality(e_stream) WHERE key = 'position';
    END IF;
    RETURN last;
END
$f$;
"""
_ARGS = ", ".join(f"${i}" for i in range(1, 23))
# The function's call, notifying the schema's channel ($23) with the writer's token ($24) when it stored events
# ($7: their streams), the last position and the events' types ($18; `_pg_listen.py`): one statement
# still, so the notification costs no round trip, and PostgreSQL delivers it with the commit.
_APPEND = (
    "WITH a AS (SELECT {s}.memoir_append(" + _ARGS + ") AS last)"
    " SELECT last, CASE WHEN last IS NOT NULL AND cardinality($7::bigint[]) > 0"
    " THEN pg_notify($23, $24 || ' ' || (last + cardinality($7::bigint[]))::text || ' '"
    " || array_to_string(ARRAY(SELECT DISTINCT unnest($18::text[])), ',')) END FROM a"
)
_NOTIFY = "SELECT pg_notify($1, $2)"

_DDL = (  # `.format(s=schema)`; also for tools
    "CREATE SCHEMA IF NOT EXISTS {s};" + dialect("{s}").ddl() + _APPEND_FUNCTION
)


async def _keep_session(conn: Any) -> None:
    """A read connection goes back to the pool as it is. The default resets its session (advisory
    locks, cursors, LISTENs, settings) with a statement of its own: a second round trip after every
    read (3-7 % of a loaded cluster member's CPU, by a profile). The journal's reads leave none of
    those behind, and asyncpg still rolls back a transaction left open before it calls this."""


def _stored(op: Append | Op, result: Any) -> TypeGuard[Append]:
    """Whether `op` is an append that stored events (`result`: the first one's position)."""
    return isinstance(op, Append) and type(result) is int


def prepare_appends(
    streams: StreamIds, batch: Sequence[Append | Op]
) -> tuple[list[Any], list[Any], dict[int, tuple[int, bool]]] | None:
    """A batch of appends as `_APPEND`'s arguments and its results relative to the counter (positions
    from 1) and the heads it assumed, or None when it needs the general path: it has other writes, or
    an entity whose stream id or head this writer does not hold. The heads move as if the batch commits
    (on NULL the caller puts the assumed ones back)."""
    appends: list[Append] = []
    sids: list[int] = []
    before: dict[int, tuple[int, bool]] = {}
    heads = streams.heads
    for op in batch:
        if not isinstance(op, Append):
            return None
        appends.append(op)
        sid = streams.ids.get(op.key)
        if sid is None:
            return None
        if sid not in before:
            head = heads.get(sid)
            if head is None:
                return None
            before[sid] = head
        sids.append(sid)
    results: list[Any] = []
    _, rows, commands = decide(sids, appends, heads, {}, 0, results)
    refused: set[int] = set()
    asked: list[tuple[int, str]] = []
    for sid, op, res in zip(sids, appends, results, strict=True):
        if isinstance(res, (Conflict, EntityDeleted)):
            refused.add(sid)
            if op.command_id is not None:
                asked.append((sid, op.command_id))
    # the events' columns after position (consecutive from 1: the function numbers them)
    events = list(map(list, zip(*rows, strict=True)))[1:] if rows else [[] for _ in range(12)]
    args: list[Any] = [
        list(before),
        [h for h, _ in before.values()],
        [d for _, d in before.values()],
        [sid in refused for sid in before],
        [s for s, _ in asked],
        [c for _, c in asked],
        *events,
        *(map(list, zip(*commands, strict=True)) if commands else ([] for _ in range(4))),
    ]
    return args, results, before


class PostgresJournal(SqlJournal):
    """The journal in a PostgreSQL schema, for several processes on one database (see the module docstring)."""

    def __init__(self, url: str, *, max_batch: int = 4096, pool_size: int = 4, listen: bool = True) -> None:
        self.dsn, self.schema = parse_postgres_url(url)
        super().__init__(dialect(self.schema), max_batch=max_batch)
        where = postgres_where(self.dsn)
        self.url = f"postgresql://{where}?schema={self.schema}"
        self.pool_size = pool_size
        self._writer: Any = None
        self._append_stmt: tuple[Any, Any] | None = None  # (connection, its prepared `_APPEND`)
        self._pool: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._writing: TaskGroup | None = None  # runs the batcher, from open() to close()
        self._link = Link("PostgreSQL journal", where)
        self.channel = channel_for(self.schema)  # where its appends are announced (NOTIFY)
        self._token = secrets.token_hex(8)  # this instance's notifications carry it; its listener skips them
        self.listener: AppendListener | None = (
            AppendListener(
                self.dsn, self.channel, self._token, self._notify_appended, where=where, position=self._position_on
            )
            if listen
            else None
        )
        self._listening = anyio.CancelScope()
        self._high = 0  # the highest position known committed: this instance's appends and reads
        self._type_high: dict[str, float] = {}  # entity type -> the last position this instance appended of it
        self._appending: Counter[str] = Counter()  # entity type -> this instance's appends of it in flight
        self._selection_asked_at: dict[Selection, float] = {}  # the last read of each that asked the store
        self._asked_at = -math.inf  # monotonic time of the last read_all that asked the store
        self.reads_skipped = 0  # reads past `_high` answered empty without a query (tests, benchmarks)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        import asyncpg

        try:
            self._writer = await asyncpg.connect(self.dsn, timeout=10)
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, timeout=10, reset=_keep_session
            )
            async with self._writer.transaction():
                await self._writer.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-ddl-{self.schema}")
                await self._writer.execute(_DDL.format(s=self.schema))
                await drive_async(self._execute, migrate(self.dialect, f"schema {self.schema}"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, JournalError) as exc:
            await self._close_connections()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(f"cannot open PostgreSQL journal at {self._link.where}: {exc}") from exc
        # The writer task's group stays open until close(), which the same task calls (the journal
        # is an async context manager): scopes nest only if nothing entered since is still open.
        stack = contextlib.AsyncExitStack()
        tg = self._writing = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._writes.run)
        stack.callback(self._writes.close)
        if self.listener is not None:
            self._listening = anyio.CancelScope()
            tg.start_soon(self._listen, self.listener, self._listening)
        self._stack = stack

    @staticmethod
    async def _listen(listener: AppendListener, scope: anyio.CancelScope) -> None:
        with scope:
            await listener.run()

    def hears_others(self) -> bool:
        return self.listener is not None and self.listener.up

    async def _position_on(self, conn: Any) -> int:
        return int(await conn.fetchval(f"SELECT value FROM {self.schema}.memoir_meta WHERE key='position'"))

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
        """Land the batches accepted so far, then close the connections, even from a cancelled scope.

        The writer's group is shielded and given a deadline rather than wrapped in a scope of
        close()'s own: a scope entered here would sit inside the group, which could then not be left.
        """
        if self._stack is not None:
            stack, self._stack = self._stack, None
            self._listening.cancel()  # before the writer's group is shielded: it has nothing to land
            if self._writing is not None:
                self._writing.cancel_scope.shield = True
                self._writing.cancel_scope.deadline = anyio.current_time() + _CLOSE_TIMEOUT
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
            results = await self._append_at_once(conn, batch)
            if results is None:
                hints = self._streams.heads.copy()  # the general path trusts none of them: it reads its own
                async with conn.transaction():
                    results = await drive_async(self._execute, self._batch(batch))
                    high = max(
                        (r + len(op.rows) - 1 for op, r in zip(batch, results, strict=True) if _stored(op, r)),
                        default=0,
                    )  # the last position this transaction stored (0: none)
                    if high:
                        types = ",".join({op.key[0] for op, r in zip(batch, results, strict=True) if _stored(op, r)})
                        await conn.execute(_NOTIFY, self.channel, f"{self._token} {high} {types}")
                if len(hints) < StreamIds.MAX and all(isinstance(op, Append) or op.keeps_heads for op in batch):
                    # the other streams' heads stay hints for the next batches (each checked when used)
                    hints.update(self._streams.heads)
                    self._streams.heads = hints
        except pg_errors() as exc:
            self._forget_streams()
            if pg_connection_lost(exc) or conn.is_closed():
                await self._drop_writer()
                raise self._link.lost(exc) from exc
            raise JournalError(f"PostgreSQL journal at {self._link.where}: write failed: {exc}") from exc
        self._link.ok()
        return results

    async def _append_at_once(self, conn: Any, batch: list[Append | Op]) -> list[Any] | None:
        """The one-round-trip path (`_APPEND`); None: the batch goes the general way."""
        prepared = prepare_appends(self._streams, batch)
        if prepared is None:
            return None
        args, results, before = prepared
        if self._append_stmt is None or self._append_stmt[0] is not conn:
            self._append_stmt = (conn, await conn.prepare(_APPEND.format(s=self.schema)))
        last = await self._append_stmt[1].fetchval(*args, self.channel, self._token)
        if last is None:  # another writer moved a head, or a command id is stored: nothing was written
            self._streams.heads.update(before)
            return None
        return [r + last if type(r) is int else r for r in results]

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        entity_type = events[-1].entity_type if events else ""
        self._appending[entity_type] += 1  # `_none_of` trusts nothing of this type until it returns
        try:
            stored = await super().append(events, expected_seq)
        except BaseException:
            # It may have committed, unheard (this instance's own notifications are skipped): no read of
            # the type is skipped until an append of it succeeds, at a later position (one writer).
            self._type_high[entity_type] = math.inf
            raise
        finally:
            self._appending[entity_type] -= 1
        self._high = max(self._high, stored[-1].position)
        self._type_high[entity_type] = stored[-1].position
        return stored

    async def save_checkpoint(self, name: str, position: int) -> None:
        """One statement on a pool connection, not a write in the writer's batch: a batch holding
        anything but appends leaves the one-statement path for a transaction of several, and the
        outbox publisher and the timer relay save several times a second (a checkpoint has no
        order to keep with appends: its caller awaits it)."""
        async with self._reading("cannot save checkpoint") as pool:
            await pool.execute(
                f"INSERT INTO {self.schema}.checkpoints VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                name,
                position,
            )

    def _make_key_store(self) -> KeyStore:
        return SqlKeyStore(write=self._write, query=self._query, after_erase=self.after_erase)

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

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        """As the SQL journals read, but "nothing" without a query for a read past every position
        known committed, while other writers' commits are heard and `idle_poll` seconds after the
        last read that asked (the module docstring says why)."""
        if self._nothing_new(from_position):
            return []
        asked_at, hits = time.monotonic(), self._tail.hits
        page = await super().read_all(from_position, limit)
        self._after_read(asked_at, hits, page)
        return page

    async def read_selected(self, selection: Selection, from_position: int = 1, limit: int = 1000) -> Page:
        """As `read_all`: past every position known committed, "nothing new" without a query; and
        for some types only, "nothing new" while none of them was heard of (`_none_of`)."""
        if self._nothing_new(from_position) or self._none_of(selection, from_position):
            return Page([], from_position - 1)
        asked_at, hits = time.monotonic(), self._tail.hits
        page = await super().read_selected(selection, from_position, limit)
        if self._after_read(asked_at, hits, page.events):
            self._selection_asked_at[selection] = asked_at
        return page

    def _nothing_new(self, from_position: int) -> bool:
        """A read past every position known committed, while commits are heard: answered without a query."""
        listener = self.listener
        if (
            listener is not None
            and listener.up
            and from_position > max(self._high, listener.high)
            and time.monotonic() - self._asked_at < self.idle_poll
        ):
            self.reads_skipped += 1
            return True
        return False

    def _none_of(self, selection: Selection, from_position: int) -> bool:
        """No event of `types` committed from `from_position` on, by what was heard: each notification
        names its events' types, and this instance's own appends are known (a partition of the outbox
        publisher or a view, reading its types while others are written, asks nothing). "Nothing new"
        only, never "looked as far as": a writer that does not notify (an older Memoir) is found by
        the read of these types `idle_poll` seconds after the last one that asked the store."""
        listener = self.listener
        if listener is None or not listener.up or selection.names or selection.firsts:
            return False  # notifications name types only
        if time.monotonic() - self._selection_asked_at.get(selection, -math.inf) >= self.idle_poll:
            return False
        types = selection.types
        if any(self._appending[t] for t in types):  # committed perhaps, not yet known here
            return False
        last = max(listener.last_of(types), max((self._type_high.get(t, 0) for t in types), default=0))
        if from_position > last:
            self.reads_skipped += 1
            return True
        return False

    def _after_read(self, asked_at: float, hits: int, events: Sequence[Envelope]) -> bool:
        """Note what a read learnt; True if it asked the store (not the tail cache)."""
        if events:
            self._high = max(self._high, events[-1].position)
        if self._tail.hits != hits:
            return False
        self._asked_at = asked_at
        return True

    async def _typed_rows(self, sql: str, args: Sequence[Any]) -> tuple[int, Rows]:
        """While listening, the bound is the highest position heard of (committed: notifications come
        with the commit), so the read is one query; else the counter is read first."""
        listener = self.listener
        if listener is not None and listener.up:
            bound = max(self._high, listener.high)
        else:
            bound = await self.last_position()
        return bound, await self._query(sql, *args)

    async def last_position(self) -> int:
        position = await super().last_position()
        self._high = max(self._high, position)
        return position

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
