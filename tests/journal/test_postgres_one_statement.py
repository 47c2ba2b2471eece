"""PostgreSQL's one-statement appends decide on heads this writer remembers; another writer's change
to any of them (a head moved, an entity deleted, a command id stored) must be seen under the lock and
answered as the general path answers it, with nothing of the batch written by the first attempt."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from support.journals import ev

from runtime import Conflict
from runtime.journal.postgres import PostgresJournal
from runtime.model.errors import DuplicateCommand, EntityDeleted

pytestmark = pytest.mark.anyio


async def test_a_second_writer_invalidates_the_first_ones_remembered_heads(postgres_url: str) -> None:
    schema = f"t_one_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}?schema={schema}"
    try:
        async with PostgresJournal(url) as a, PostgresJournal(url) as b:
            await a.append([ev("x", 1), ev("x", 2)], 0)
            await a.append([ev("y", 1)], 0)
            await a.append([ev("z", 1)], 0)
            assert a._streams.heads  # the one-statement path is what the next appends take
            await b.append([ev("x", 3)], 2)  # behind a's back
            with pytest.raises(Conflict) as info:
                await a.append([ev("x", 3)], 2)
            assert info.value.actual_seq == 3
            await a.append([ev("x", 4)], 3)  # a learned the head from the general path
            await b.append([ev("y", 2, command_id="c1", reply=b"1")], 1)
            with pytest.raises(DuplicateCommand):
                await a.append([ev("y", 2, command_id="c1", reply=b"2")], 1)
            await b.delete("thing", "z")
            with pytest.raises(EntityDeleted):
                await a.append([ev("z", 2)], 1)
            assert [e.seq for e in await a.read("thing", "x")] == [1, 2, 3, 4]
            assert [e.seq for e in await a.read("thing", "y")] == [1, 2]
            assert await a.last_position() == 7
        conn = await asyncpg.connect(postgres_url)
        try:
            stored = await conn.fetch(f"SELECT position FROM {schema}.events ORDER BY position")
            assert [r[0] for r in stored] == [1, 2, 3, 5, 6, 7]  # 4 was z's, deleted; no gap, no repeat
        finally:
            await conn.close()
    finally:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()
