"""The SQL journals' key store: an `entity_keys` table beside the events.

The table is created on first use (`CREATE TABLE IF NOT EXISTS`), so journals written
before it existed open unchanged and the journal's own schema version does not move.
Writes go through the journal's batch writer, inside its transactions.

Forgetting overwrites the row's material with NULL and keeps the row as a tombstone.
SQLite then also has the freed bytes zeroed (`secure_delete`) and the WAL truncated
(see `SqliteJournal.after_erase`), so the key is not left in the file's free space or
in old WAL frames. PostgreSQL keeps the old row version until VACUUM and in its WAL
archive: configure a master key so whatever lingers there is wrapped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._sql import Dialect, Rows, Steps, StreamIds
from .keys import KeyEntry, KeyStore

Write = Callable[[Callable[[Dialect, StreamIds], Steps[Any]]], Awaitable[Any]]
"""Run steps inside one of the journal's write transactions; returns what the steps return."""
Query = Callable[..., Awaitable[Rows]]
"""One read statement, written with `?` and `{s}` (the journal renders it for its dialect)."""

_DDL = (
    "CREATE TABLE IF NOT EXISTS {s}entity_keys ("
    " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, material {blob}, forgotten_at {int},"
    " PRIMARY KEY (entity_type, entity_id))"
)
_SELECT = "SELECT material FROM {s}entity_keys WHERE entity_type=? AND entity_id=?"


def _entry(rows: list[Any]) -> KeyEntry | None:
    if not rows:
        return None
    return KeyEntry(None if rows[0][0] is None else bytes(rows[0][0]))


class SqlKeyStore(KeyStore):
    """Given the three things it needs from its journal, not the journal: it sees no more of it."""

    def __init__(self, *, write: Write, query: Query, after_erase: Callable[[], Awaitable[None]]) -> None:
        self._write = write
        self._query = query
        self._after_erase = after_erase  # make a destroyed key unrecoverable from the storage's files
        self._ready = False

    async def _ensure(self) -> None:
        if self._ready:
            return

        def steps(d: Dialect, streams: StreamIds) -> Steps[None]:
            yield (d.sql(_DDL.replace("{blob}", d.types["blob"]).replace("{int}", d.types["int"])), ())

        await self._write(steps)
        self._ready = True

    async def get(self, entity_type: str, entity_id: str) -> KeyEntry | None:
        await self._ensure()
        return _entry(await self._query(_SELECT, entity_type, entity_id))

    async def create(self, entity_type: str, entity_id: str, material: bytes) -> KeyEntry:
        await self._ensure()

        def steps(d: Dialect, streams: StreamIds) -> Steps[KeyEntry | None]:
            yield (
                d.sql(
                    "INSERT INTO {s}entity_keys (entity_type, entity_id, material) VALUES (?,?,?)"
                    " ON CONFLICT DO NOTHING"
                ),
                (entity_type, entity_id, material),
            )
            return _entry((yield (d.sql(_SELECT), (entity_type, entity_id))))

        entry = await self._write(steps)
        assert entry is not None  # inserted or already there, in the same transaction
        return entry  # type: ignore[no-any-return]

    async def forget(self, entity_type: str, entity_id: str) -> bool:
        await self._ensure()

        def steps(d: Dialect, streams: StreamIds) -> Steps[bool]:
            old = _entry((yield (d.sql(_SELECT), (entity_type, entity_id))))
            if d.name == "sqlite":  # the overwritten bytes are zeroed, not left in the page's free space
                yield ("PRAGMA secure_delete=ON", ())
            yield (
                d.sql(
                    "INSERT INTO {s}entity_keys (entity_type, entity_id, material, forgotten_at) VALUES (?,?,NULL,?)"
                    " ON CONFLICT (entity_type, entity_id)"
                    " DO UPDATE SET material=NULL, forgotten_at=excluded.forgotten_at"
                ),
                (entity_type, entity_id, time.time_ns()),
            )
            if d.name == "sqlite":
                yield ("PRAGMA secure_delete=OFF", ())
            return old is not None and not old.forgotten

        had = bool(await self._write(steps))
        await self._after_erase()
        return had
