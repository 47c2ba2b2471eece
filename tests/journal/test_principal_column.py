"""Journals written before events had a principal column open, gain it, and keep every event."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest
from support.journals import ev
from support.postgres import schema_for

from runtime import Journal

pytestmark = pytest.mark.anyio

_OLD_VIEW = """
CREATE VIEW event_log AS
    SELECT e.position, s.entity_type, s.entity_id, e.seq, e.name, e.version, e.recorded_at,
           e.command_id, e.correlation_id, e.causation_id, e.reply, e.payload
    FROM events e JOIN streams s ON s.id = e.stream;
"""


async def _write_then_check(journal: Journal) -> None:
    old = await journal.read("thing", "old")
    assert [(e.seq, e.principal) for e in old] == [(1, None), (2, None)]
    await journal.append([msgspec.structs.replace(ev("old", 3), principal="ann")], 2)
    assert [e.principal for e in await journal.read("thing", "old")] == [None, None, "ann"]


async def test_a_sqlite_journal_from_before_the_principal_gains_it(tmp_path: Path) -> None:
    from runtime.journal.sqlite import SqliteJournal

    path = tmp_path / "old.db"
    async with SqliteJournal(path) as journal:
        await journal.append([ev("old", 1), ev("old", 2)], 0)
    with sqlite3.connect(path) as db:  # the file as the previous release left it
        db.executescript(f"DROP VIEW event_log; ALTER TABLE events DROP COLUMN principal; {_OLD_VIEW}")
    db.close()
    async with SqliteJournal(path) as journal:
        await _write_then_check(journal)
    async with SqliteJournal(path) as journal:  # the column is there now: opening again changes nothing
        assert [e.principal for e in await journal.read("thing", "old")] == [None, None, "ann"]
    with sqlite3.connect(path) as db:  # the view for ad-hoc SQL shows it too
        assert db.execute("SELECT seq, principal FROM event_log ORDER BY seq").fetchall() == [
            (1, None),
            (2, None),
            (3, "ann"),
        ]
    db.close()


async def test_a_postgres_journal_from_before_the_principal_gains_it(tmp_path: Path, postgres_url: str) -> None:
    import asyncpg

    from runtime.journal.postgres import PostgresJournal

    schema = schema_for("t_pr_", tmp_path)
    url = f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        async with PostgresJournal(url) as journal:
            await journal.append([ev("old", 1), ev("old", 2)], 0)
        await conn.execute(f"ALTER TABLE {schema}.events DROP COLUMN principal")
        async with PostgresJournal(url) as journal:
            await _write_then_check(journal)
        async with PostgresJournal(url) as journal:
            assert [e.principal for e in await journal.read("thing", "old")] == [None, None, "ann"]
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
