"""`events.entity_type` (what `read_types` selects by): a journal from before it gains it, filled from
`streams`, and an event inserted without it (a Memoir from before, still writing in a rolling upgrade)
is filled by the trigger, so a reader of its type finds it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support.journals import ev
from support.postgres import schema_for

from runtime import Journal

pytestmark = pytest.mark.anyio

_OLD_ROW = "(position, stream, seq, name, version, recorded_at, payload)"


async def _write_old_events(journal: Journal) -> None:
    await journal.append([ev("x", 1, entity_type="a"), ev("x", 2, entity_type="a")], 0)
    await journal.append([ev("y", 1, entity_type="b")], 0)
    await journal.append([ev("z", 1, entity_type="a")], 0)


async def _check(journal: Journal, old_writer_position: int) -> None:
    page = await journal.read_types({"a"}, 1)
    assert [(e.entity_id, e.seq) for e in page.events] == [("x", 1), ("x", 2), ("z", 1), ("x", 3)]
    assert page.events[-1].position == old_writer_position
    assert [(e.entity_id, e.seq) for e in (await journal.read_types({"b"}, 1)).events] == [("y", 1)]


async def test_a_sqlite_journal_from_before_the_type_column_gains_it(tmp_path: Path) -> None:
    from runtime.journal.sqlite import SqliteJournal

    path = tmp_path / "old.db"
    async with SqliteJournal(path) as journal:
        await _write_old_events(journal)
    with sqlite3.connect(path) as db:  # the file as the previous release left it
        db.executescript(
            "DROP TRIGGER events_type; DROP INDEX events_type_position; ALTER TABLE events DROP COLUMN entity_type;"
        )
    db.close()
    async with SqliteJournal(path) as journal:
        assert (await journal.read_types({"a"}, 1)).events[-1].entity_id == "z"  # filled from `streams`
    with sqlite3.connect(path) as db:  # an older Memoir appends, naming no type
        stream = db.execute("SELECT id FROM streams WHERE entity_type='a' AND entity_id='x'").fetchone()[0]
        db.execute(f"INSERT INTO events {_OLD_ROW} VALUES (5, ?, 3, 'Happened', 1, 0, x'7b7d')", (stream,))
        plan = " ".join(
            str(r[-1])
            for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT position FROM events WHERE entity_type IN (?) AND position >= ?"
                " ORDER BY position LIMIT 10",
                ("a", 1),
            )
        )
    db.close()
    assert "events_type_position" in plan
    async with SqliteJournal(path) as journal:
        await _check(journal, 5)


async def test_a_postgres_journal_from_before_the_type_column_gains_it(tmp_path: Path, postgres_url: str) -> None:
    import asyncpg

    from runtime.journal.postgres import PostgresJournal

    schema = schema_for("t_ty_", tmp_path)
    url = f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        async with PostgresJournal(url) as journal:
            await _write_old_events(journal)
        await conn.execute(
            f"DROP TRIGGER events_type ON {schema}.events; DROP INDEX {schema}.events_type_position;"
            f" ALTER TABLE {schema}.events DROP COLUMN entity_type"
        )
        async with PostgresJournal(url) as journal:
            assert (await journal.read_types({"a"}, 1)).events[-1].entity_id == "z"  # filled from `streams`
        stream = await conn.fetchval(f"SELECT id FROM {schema}.streams WHERE entity_type='a' AND entity_id='x'")
        async with conn.transaction():  # an older Memoir appends, naming no type
            await conn.execute(
                f"INSERT INTO {schema}.events {_OLD_ROW} VALUES (5, $1, 3, 'Happened', 1, 0, '{{}}'::bytea)", stream
            )
            await conn.execute(f"UPDATE {schema}.memoir_meta SET value = 5 WHERE key = 'position'")
        async with PostgresJournal(url) as journal:
            await _check(journal, 5)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
