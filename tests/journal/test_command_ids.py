"""Command ids hold in the journal itself: a repeated id stores nothing and answers the first write.

Every backend (memory, SQLite, PostgreSQL, JetStream) is held to the same rules; only
`find_command` may answer None on JetStream, which dedupes on append alone.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from support.journals import JournalFactory, ev
from support.postgres import schema_for

from runtime import Conflict, Envelope, Journal
from runtime.model.errors import DuplicateCommand

pytestmark = pytest.mark.anyio


def command(entity_id: str, first_seq: int, n: int, command_id: str, reply: bytes) -> list[Envelope]:
    """A command's events as the actor writes them: all carry its id, the last one its reply."""
    return [ev(entity_id, first_seq + i, command_id=command_id, reply=reply if i == n - 1 else None) for i in range(n)]


def is_jetstream(journal: Journal) -> bool:
    return type(journal).__name__ == "JetStreamJournal"


async def test_repeat_after_300_other_commands_is_a_duplicate_and_stores_nothing(journal: Journal) -> None:
    first = await journal.append(command("a", 1, 1, "c-0", b'"first"'), 0)
    for i in range(1, 301):
        await journal.append(command("a", i + 1, 1, f"c-{i}", b"1"), i)
    before = await journal.last_position()
    with pytest.raises(DuplicateCommand) as info:
        await journal.append(command("a", 302, 1, "c-0", b'"second"'), 301)
    assert (info.value.seq, info.value.reply, info.value.command_id) == (1, b'"first"', "c-0")
    assert info.value.entity_id == "a" and first[0].seq == 1
    assert await journal.head("thing", "a") == 301
    assert await journal.last_position() == before
    assert len(await journal.read("thing", "a")) == 301


async def test_repeat_with_a_stale_expected_seq_is_a_duplicate_not_a_conflict(journal: Journal) -> None:
    await journal.append(command("a", 1, 1, "once", b"7"), 0)
    await journal.append(command("a", 2, 1, "other", b"8"), 1)
    with pytest.raises(DuplicateCommand) as info:
        await journal.append(command("a", 1, 1, "once", b"9"), 0)  # decided on the state before "once"
    assert (info.value.seq, info.value.reply) == (1, b"7")
    with pytest.raises(Conflict):  # a new id with the same stale seq is still a conflict
        await journal.append(command("a", 1, 1, "new", b"9"), 0)
    assert [e.command_id for e in await journal.read("thing", "a")] == ["once", "other"]


async def test_a_multi_event_command_is_one_command(journal: Journal) -> None:
    await journal.append(command("m", 1, 3, "multi", b'"done"'), 0)
    for n in (1, 3):
        with pytest.raises(DuplicateCommand) as info:
            await journal.append(command("m", 4, n, "multi", b'"again"'), 3)
        assert (info.value.seq, info.value.reply) == (3, b'"done"')
    stored = await journal.read("thing", "m")
    assert [(e.seq, e.command_id, e.reply) for e in stored] == [
        (1, "multi", None),
        (2, "multi", None),
        (3, "multi", b'"done"'),
    ]


async def test_ids_belong_to_one_entity(journal: Journal) -> None:
    await journal.append(command("a", 1, 1, "shared", b"1"), 0)
    stored = await journal.append(command("b", 1, 1, "shared", b"2"), 0)
    assert stored[0].seq == 1
    await journal.append([ev("a", 1, command_id="shared", reply=b"3", entity_type="other")], 0)
    assert await journal.head("other", "a") == 1


async def test_the_same_id_twice_in_one_concurrent_burst_is_stored_once(journal: Journal) -> None:
    outcomes: list[tuple[str, object]] = []

    async def send(entity_id: str, command_id: str, reply: bytes) -> None:
        try:
            outcomes.append((entity_id, await journal.append(command(entity_id, 1, 2, command_id, reply), 0)))
        except (DuplicateCommand, Conflict) as exc:
            outcomes.append((entity_id, exc))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:  # one burst: the SQL journals take it as one batch
            for i in range(40):
                tg.start_soon(send, f"other-{i}", f"o-{i}", b"0")
                if i % 10 == 0:
                    tg.start_soon(send, "hot", "burst", f'"{i}"'.encode())
    hot = [o for e, o in outcomes if e == "hot"]
    won = [o for o in hot if isinstance(o, list)]
    assert len(won) == 1, hot
    assert all(isinstance(o, DuplicateCommand) for o in hot if o is not won[0]), hot
    winner_reply = won[0][-1].reply
    assert {(o.seq, o.reply) for o in hot if isinstance(o, DuplicateCommand)} == {(2, winner_reply)}
    assert [e.seq for e in await journal.read("thing", "hot")] == [1, 2]
    assert all(isinstance(o, list) for e, o in outcomes if e != "hot")


async def test_find_command_tells_where_an_id_was_stored(journal: Journal) -> None:
    await journal.append(command("f", 1, 2, "found", b'"r"'), 0)
    found = await journal.find_command("thing", "f", "found")
    if found is None and is_jetstream(journal):
        return  # JetStream dedupes on append only; None means "cannot tell"
    assert found == (2, b'"r"')
    assert await journal.find_command("thing", "f", "missing") is None
    assert await journal.find_command("thing", "nobody", "found") is None


async def test_ids_are_remembered_across_a_reopen(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal:
        await journal.append(command("r", 1, 1, "kept", b"1"), 0)
    async with journal_factory.open() as journal:
        with pytest.raises(DuplicateCommand) as info:
            await journal.append(command("r", 2, 1, "kept", b"2"), 1)
        assert (info.value.seq, info.value.reply) == (1, b"1")


async def test_truncated_events_keep_their_ids(journal: Journal) -> None:
    """Truncating events (after a snapshot) keeps the ids: the window is not shortened by it."""
    await journal.append(command("t", 1, 1, "early", b"1"), 0)
    await journal.append(command("t", 2, 1, "late", b"2"), 1)
    await journal.delete("thing", "t", to_seq=2)
    if is_jetstream(journal):
        return  # where JetStream keeps its ids is natshelper's to document
    with pytest.raises(DuplicateCommand) as info:
        await journal.append(command("t", 3, 1, "early", b"3"), 2)
    assert (info.value.seq, info.value.reply) == (1, b"1")


# -- migrating a version-1 schema, which had no table of command ids -----------------------------

_V1_SQLITE = """
CREATE TABLE memoir_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE streams (id INTEGER PRIMARY KEY, entity_type TEXT NOT NULL, entity_id TEXT NOT NULL,
    floor INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0, UNIQUE (entity_type, entity_id));
CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, stream INTEGER NOT NULL REFERENCES streams (id),
    seq INTEGER NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, recorded_at INTEGER NOT NULL,
    command_id TEXT, correlation_id TEXT, causation_id TEXT, reply BLOB, payload BLOB NOT NULL, UNIQUE (stream, seq));
CREATE TABLE snapshots (stream INTEGER NOT NULL REFERENCES streams (id), seq INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE TABLE checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
INSERT INTO memoir_meta VALUES ('schema_version', 1);
INSERT INTO streams (id, entity_type, entity_id) VALUES (1, 'thing', 'old');
INSERT INTO events (stream, seq, name, version, recorded_at, command_id, reply, payload) VALUES
    (1, 1, 'Happened', 1, 0, 'two-events', NULL, x'7b7d'),
    (1, 2, 'Happened', 1, 0, 'two-events', x'31', x'7b7d'),
    (1, 3, 'Happened', 1, 0, NULL, NULL, x'7b7d'),
    (1, 4, 'Happened', 1, 0, 'twice', x'32', x'7b7d'),
    (1, 5, 'Happened', 1, 0, 'twice', x'33', x'7b7d');
"""


async def check_migrated(journal: Journal) -> None:
    assert [e.seq for e in await journal.read("thing", "old")] == [1, 2, 3, 4, 5]
    assert await journal.find_command("thing", "old", "two-events") == (2, b"1")
    assert await journal.find_command("thing", "old", "twice") == (4, b"2")  # the first write answers
    with pytest.raises(DuplicateCommand):
        await journal.append(command("old", 6, 1, "two-events", b"x"), 5)
    stored = await journal.append(command("old", 6, 1, "new", b"y"), 5)
    assert stored[0].position == 6


async def test_a_version_1_sqlite_journal_is_migrated(tmp_path: Path) -> None:
    from runtime.journal.sqlite import SqliteJournal

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript(_V1_SQLITE)
    db.close()
    async with SqliteJournal(path) as journal:
        await check_migrated(journal)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM memoir_meta WHERE key='schema_version'").fetchone() == (2,)
    db.close()
    async with SqliteJournal(path) as journal:  # and opens again as version 2
        assert await journal.find_command("thing", "old", "new") == (6, b"y")


async def test_a_version_1_postgres_journal_is_migrated(tmp_path: Path, postgres_url: str) -> None:
    import asyncpg

    from runtime.journal.postgres import PostgresJournal

    schema = schema_for("t_mig_", tmp_path)
    v1 = (
        _V1_SQLITE.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "bigint PRIMARY KEY")
        .replace(" WITHOUT ROWID", "")
        .replace("BLOB", "bytea")
        .replace("deleted INTEGER NOT NULL DEFAULT 0", "deleted boolean NOT NULL DEFAULT false")
        .replace("id INTEGER PRIMARY KEY", "id bigserial PRIMARY KEY")
        .replace("INTEGER", "bigint")
        .replace("x'7b7d'", "'\\x7b7d'::bytea")
        .replace("x'31'", "'\\x31'::bytea")
        .replace("x'32'", "'\\x32'::bytea")
        .replace("x'33'", "'\\x33'::bytea")
        .replace("INSERT INTO events (stream,", "INSERT INTO events (position, stream,")
    )
    for p, row in enumerate(["(1, 1,", "(1, 2,", "(1, 3,", "(1, 4,", "(1, 5,"], start=1):
        v1 = v1.replace(row, f"({p}, {row[1:]}", 1)
    v1 = v1.replace("('schema_version', 1);", "('schema_version', 1), ('position', 5);")
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path={schema};")
        await conn.execute(v1)
        await conn.execute(f"SELECT setval(pg_get_serial_sequence('{schema}.streams', 'id'), 1)")
        async with PostgresJournal(f"{postgres_url}?schema={schema}") as journal:
            await check_migrated(journal)
        assert await conn.fetchval(f"SELECT value FROM {schema}.memoir_meta WHERE key='schema_version'") == 2
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
