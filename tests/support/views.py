"""A view store of each kind, private to one test, for the suites that run on all of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .postgres import POSTGRES_URL, need_postgres, schema_for

VIEW_STORES = ["memory", "sqlite", "postgres"]


@contextlib.asynccontextmanager
async def open_view_store_for_test(kind: str, directory: Path) -> AsyncIterator[Any]:
    """A view store of `kind` private to one test; the same directory reopens the same one."""
    from runtime.streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore

    if kind == "memory":
        yield MemoryViewStore()
    elif kind == "sqlite":
        async with SqliteViewStore(directory / "views.db") as store:
            yield store
    else:
        need_postgres()
        async with PostgresViewStore(f"{POSTGRES_URL}?schema={schema_for('v_', directory)}") as store:
            yield store


async def drop_view_schema(directory: Path) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema_for('v_', directory)} CASCADE")
    await conn.close()
