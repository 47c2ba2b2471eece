"""`postgresql://user@host:port/db?schema=memoir`: the journal on PostgreSQL (asyncpg).

- Group commit: every write goes through one `Batcher`; a batch is one transaction of a
  handful of round trips whatever its size (heads of all its entities in one query, all
  its events in one `INSERT … SELECT FROM unnest(…)`), on one writer connection.
- Positions safe for tailers. A sequence would hand out numbers in call order but
  transactions commit in another, so a reader of "everything after P" could pass a row
  that commits later with a lower number. Instead each batch takes the row lock on the
  `position` counter first, which serializes writers (of every process) from that point to
  their commit: positions are assigned in commit order and a tailer never skips one. With
  group commit one writer transaction at a time is not the bottleneck, and it also makes
  the optimistic seq check authoritative without per-entity locks.
- Several runtime processes may write to the same journal; the optimistic check on each
  entity's seq is the last guard against two writers of one entity.
- Schema created on first use inside its own PostgreSQL schema, versioned in `memoir_meta`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio
import msgspec

from ..model.envelope import Envelope, Recovery, Snapshot
from ..model.errors import ConcurrencyConflict, ConfigError, EntityDeleted, JournalError
from ._batching import Batcher
from .base import ROW_COLUMNS, Journal, check_batch, envelope_from_row, row_values

T = TypeVar("T")
Key = tuple[str, str]
SCHEMA_VERSION = 1
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.memoir_meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.streams (
    id bigserial PRIMARY KEY,
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    floor bigint NOT NULL DEFAULT 0,
    deleted boolean NOT NULL DEFAULT false,
    UNIQUE (entity_type, entity_id)
);
CREATE TABLE IF NOT EXISTS {s}.events (
    position bigint PRIMARY KEY,
    stream bigint NOT NULL REFERENCES {s}.streams (id),
    seq bigint NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    recorded_at bigint NOT NULL,
    command_id text,
    correlation_id text,
    causation_id text,
    reply bytea,
    payload bytea NOT NULL,
    UNIQUE (stream, seq)
);
CREATE TABLE IF NOT EXISTS {s}.snapshots (
    stream bigint NOT NULL REFERENCES {s}.streams (id),
    seq bigint NOT NULL,
    recorded_at bigint NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS {s}.checkpoints (name text PRIMARY KEY, position bigint NOT NULL);
INSERT INTO {s}.memoir_meta VALUES ('schema_version', 1), ('position', 0) ON CONFLICT DO NOTHING;
"""

_COLUMNS = ", ".join(("s." if c in ("entity_type", "entity_id") else "e.") + c for c in ROW_COLUMNS)
_HEAD = "greatest(s.floor, coalesce((SELECT max(seq) FROM {s}.events WHERE stream = s.id), 0))"


class _Append(msgspec.Struct):
    key: Key
    expected_seq: int
    events: Sequence[Envelope]


class _Op(msgspec.Struct):
    fn: Callable[[Any], Awaitable[Any]]


def parse_postgres_url(url: str) -> tuple[str, str]:
    """The asyncpg DSN (without our options) and the schema name."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {url!r}")
    opts = parse_qs(parts.query)
    schema = opts.pop("schema", ["memoir"])[-1]
    if not _IDENT.match(schema):
        raise ConfigError(f"schema {schema!r} must be a lowercase SQL identifier (a-z, 0-9, _)")
    query = "&".join(f"{k}={v[-1]}" for k, v in opts.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), schema


def _where(dsn: str) -> str:
    """host:port/db of a DSN, never its password."""
    p = urlsplit(dsn)
    return f"{p.hostname}:{p.port or 5432}{p.path}"


class PostgresJournal(Journal):
    def __init__(self, url: str, *, max_batch: int = 4096, pool_size: int = 4) -> None:
        self.dsn, self.schema = parse_postgres_url(url)
        self.url = f"postgresql://{_where(self.dsn)}?schema={self.schema}"
        self.pool_size = pool_size
        self._writes: Batcher[_Append | _Op, Any] = Batcher(self._flush, max_batch=max_batch, name="postgres")
        self._writer: Any = None
        self._pool: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._ids: dict[Key, int] = {}
        s = self.schema
        self._head = _HEAD.format(s=s)

    def sql(self, text: str) -> str:
        return text.replace("{s}", self.schema)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        import asyncpg

        try:
            self._writer = await asyncpg.connect(self.dsn, timeout=10)
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size, timeout=10)
            async with self._writer.transaction():
                await self._writer.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"memoir-ddl-{self.schema}")
                await self._writer.execute(_DDL.format(s=self.schema))
            version = await self._writer.fetchval(
                self.sql("SELECT value FROM {s}.memoir_meta WHERE key='schema_version'")
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            await self._close_connections()
            raise JournalError(f"cannot open PostgreSQL journal at {_where(self.dsn)}: {exc}") from exc
        if version > SCHEMA_VERSION:
            await self._close_connections()
            raise JournalError(f"schema {self.schema} has version {version}, newer than this Memoir ({SCHEMA_VERSION})")
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._writes.run)
        stack.callback(self._writes.close)
        self._stack = stack

    async def _close_connections(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        await self._close_connections()

    # -- writes ----------------------------------------------------------------------------------

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        key = check_batch(events, expected_seq)
        first = await self._writes.submit(_Append(key, expected_seq, events))
        self._notify_appended()
        return [msgspec.structs.replace(e, position=first + i) for i, e in enumerate(events)]

    async def _flush(self, batch: list[_Append | _Op]) -> list[Any]:
        import asyncpg

        conn = self._writer
        try:
            async with conn.transaction():
                # The counter's row lock serializes writers until commit: positions in commit order.
                position = await conn.fetchval(
                    self.sql("SELECT value FROM {s}.memoir_meta WHERE key='position' FOR UPDATE")
                )
                results: list[Any] = []
                run: list[_Append] = []
                for op in batch:
                    if isinstance(op, _Append):
                        run.append(op)
                        continue
                    if run:
                        position = await self._write_appends(conn, run, position, results)
                        run = []
                    results.append(await op.fn(conn))
                if run:
                    position = await self._write_appends(conn, run, position, results)
                await conn.execute(self.sql("UPDATE {s}.memoir_meta SET value=$1 WHERE key='position'"), position)
            return results
        except (OSError, asyncpg.PostgresError) as exc:
            self._ids.clear()
            raise JournalError(f"PostgreSQL journal at {_where(self.dsn)}: write failed: {exc}") from exc

    async def _stream_ids(self, conn: Any, keys: Sequence[Key], *, create: bool) -> dict[Key, int]:
        missing = list({k for k in keys if k not in self._ids})
        if missing:
            types, ids = [k[0] for k in missing], [k[1] for k in missing]
            if create:
                await conn.execute(
                    self.sql(
                        "INSERT INTO {s}.streams (entity_type, entity_id)"
                        " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING"
                    ),
                    types,
                    ids,
                )
            rows = await conn.fetch(
                self.sql(
                    "SELECT s.entity_type, s.entity_id, s.id FROM {s}.streams s"
                    " JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON s.entity_type = k.t AND s.entity_id = k.i"
                ),
                types,
                ids,
            )
            if len(self._ids) > 200_000:
                self._ids.clear()
            self._ids.update(((r[0], r[1]), r[2]) for r in rows)
        return self._ids

    async def _write_appends(self, conn: Any, appends: list[_Append], position: int, results: list[Any]) -> int:
        ids = await self._stream_ids(conn, [op.key for op in appends], create=True)
        sids = sorted({ids[op.key] for op in appends})
        rows = await conn.fetch(
            self.sql(f"SELECT s.id, s.deleted, {self._head} FROM {{s}}.streams s WHERE s.id = ANY($1::bigint[])"),
            sids,
        )
        heads = {r[0]: (r[2], r[1]) for r in rows}
        cols: list[list[Any]] = [[] for _ in range(11)]
        for op in appends:
            sid = ids[op.key]
            head, deleted = heads[sid]
            if deleted:
                results.append(EntityDeleted(*op.key))
                continue
            if head != op.expected_seq:
                results.append(ConcurrencyConflict(op.key[0], op.key[1], op.expected_seq, head))
                continue
            results.append(position + 1)
            for env in op.events:
                position += 1
                for col, value in zip(
                    cols,
                    (position, sid, *row_values(env)),
                    strict=True,
                ):
                    col.append(value)
            heads[sid] = (head + len(op.events), deleted)  # a later append in this batch sees this one
        if cols[0]:
            await conn.execute(
                self.sql(
                    "INSERT INTO {s}.events (position, stream, seq, name, version, recorded_at, command_id,"
                    " correlation_id, causation_id, reply, payload) SELECT * FROM unnest($1::bigint[], $2::bigint[],"
                    " $3::bigint[], $4::text[], $5::int[], $6::bigint[], $7::text[], $8::text[], $9::text[],"
                    " $10::bytea[], $11::bytea[])"
                ),
                *cols,
            )
        return position

    async def _write(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        return await self._writes.submit(_Op(fn))  # type: ignore[no-any-return]

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        key = (entity_type, entity_id)

        async def run(conn: Any) -> None:
            sid = (await self._stream_ids(conn, [key], create=True))[key]
            head = await conn.fetchval(self.sql(f"SELECT {self._head} FROM {{s}}.streams s WHERE s.id=$1"), sid)
            upto = head if to_seq is None else min(to_seq, head)
            await conn.execute(self.sql("DELETE FROM {s}.events WHERE stream=$1 AND seq<=$2"), sid, upto)
            await conn.execute(self.sql("UPDATE {s}.streams SET floor=greatest(floor, $2) WHERE id=$1"), sid, upto)
            if to_seq is None:
                await conn.execute(self.sql("DELETE FROM {s}.snapshots WHERE stream=$1"), sid)
                await conn.execute(self.sql("UPDATE {s}.streams SET deleted=true WHERE id=$1"), sid)

        await self._write(run)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        s = snapshot
        key = (s.entity_type, s.entity_id)

        async def run(conn: Any) -> None:
            sid = (await self._stream_ids(conn, [key], create=True))[key]
            await conn.execute(
                self.sql(
                    "INSERT INTO {s}.snapshots VALUES ($1,$2,$3,$4) ON CONFLICT (stream, seq)"
                    " DO UPDATE SET recorded_at=excluded.recorded_at, payload=excluded.payload"
                ),
                sid,
                s.seq,
                s.recorded_at,
                s.payload,
            )

        await self._write(run)

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        await self._write(
            lambda conn: conn.execute(
                self.sql(
                    "DELETE FROM {s}.snapshots n USING {s}.streams s WHERE s.id = n.stream"
                    " AND s.entity_type=$1 AND s.entity_id=$2 AND n.seq<=$3"
                ),
                entity_type,
                entity_id,
                to_seq,
            )
        )

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self._write(
            lambda conn: conn.execute(
                self.sql("INSERT INTO {s}.checkpoints VALUES ($1,$2) ON CONFLICT (name) DO UPDATE SET position=$2"),
                name,
                position,
            )
        )

    # -- reads -------------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        import asyncpg

        if self._pool is None:
            raise JournalError("the PostgreSQL journal is not open (use `async with journal:`)")
        try:
            return await self._pool.fetch(self.sql(query), *args)  # type: ignore[no-any-return]
        except (OSError, asyncpg.PostgresError) as exc:
            raise JournalError(f"PostgreSQL journal at {_where(self.dsn)}: {exc}") from exc

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM {{s}}.events e JOIN {{s}}.streams s ON s.id = e.stream"
            " WHERE s.entity_type=$1 AND s.entity_id=$2 AND e.seq>=$3 AND e.seq<=$4 ORDER BY e.seq LIMIT $5",
            entity_type,
            entity_id,
            from_seq,
            to_seq if to_seq is not None else 2**62,
            limit,
        )
        return [envelope_from_row(r) for r in rows]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM {{s}}.events e JOIN {{s}}.streams s ON s.id = e.stream"
            " WHERE e.position>=$1 ORDER BY e.position LIMIT $2",
            from_position,
            limit,
        )
        return [envelope_from_row(r) for r in rows]

    async def _stream(self, entity_type: str, entity_id: str) -> tuple[int, bool]:
        rows = await self._fetch(
            f"SELECT {self._head}, s.deleted FROM {{s}}.streams s WHERE s.entity_type=$1 AND s.entity_id=$2",
            entity_type,
            entity_id,
        )
        return (rows[0][0], rows[0][1]) if rows else (0, False)

    async def head(self, entity_type: str, entity_id: str) -> int:
        return (await self._stream(entity_type, entity_id))[0]

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return (await self._stream(entity_type, entity_id))[1]

    async def last_position(self) -> int:
        rows = await self._fetch("SELECT value FROM {s}.memoir_meta WHERE key='position'")
        return int(rows[0][0])

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        rows = await self._fetch(
            "SELECT n.seq, n.recorded_at, n.payload FROM {s}.snapshots n JOIN {s}.streams s ON s.id = n.stream"
            " WHERE s.entity_type=$1 AND s.entity_id=$2 AND n.seq<=$3 ORDER BY n.seq DESC LIMIT 1",
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
        rows = await self._fetch("SELECT position FROM {s}.checkpoints WHERE name=$1", name)
        return int(rows[0][0]) if rows else 0

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        """One repeatable-read transaction: the snapshot, the events after it, and the head agree."""
        import asyncpg

        if self._pool is None:
            raise JournalError("the PostgreSQL journal is not open (use `async with journal:`)")
        try:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                stream = await conn.fetchrow(
                    self.sql(
                        f"SELECT s.id, {self._head}, s.deleted FROM {{s}}.streams s"
                        " WHERE s.entity_type=$1 AND s.entity_id=$2"
                    ),
                    entity_type,
                    entity_id,
                )
                if stream is None:
                    return Recovery(None, [], 0)
                sid, head, deleted = stream
                snap = await conn.fetchrow(
                    self.sql(
                        "SELECT seq, recorded_at, payload FROM {s}.snapshots WHERE stream=$1 ORDER BY seq DESC LIMIT 1"
                    ),
                    sid,
                )
                snapshot = (
                    None
                    if snap is None
                    else Snapshot(
                        entity_type=entity_type,
                        entity_id=entity_id,
                        seq=snap[0],
                        recorded_at=snap[1],
                        payload=bytes(snap[2]),
                    )
                )
                rows = await conn.fetch(
                    self.sql(
                        "SELECT e.position, $1::text, $2::text, e.seq, e.name, e.version, e.recorded_at,"
                        " e.command_id, e.correlation_id, e.causation_id, e.reply, e.payload"
                        " FROM {s}.events e WHERE e.stream=$3 AND e.seq>$4 ORDER BY e.seq"
                    ),
                    entity_type,
                    entity_id,
                    sid,
                    snapshot.seq if snapshot else 0,
                )
                return Recovery(snapshot, [envelope_from_row(r) for r in rows], head, deleted)
        except (OSError, asyncpg.PostgresError) as exc:
            raise JournalError(f"cannot recover {entity_type}/{entity_id} from {_where(self.dsn)}: {exc}") from exc
