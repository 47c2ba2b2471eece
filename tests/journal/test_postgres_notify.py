"""PostgreSQL wakes tailers in other processes: an append's transaction notifies the schema's
channel and every journal LISTENs on a connection of its own (runtime/journal/_pg_listen.py).

Each test sets the journal's safety poll (`idle_poll`) to 60 s, so an event that arrives within
the generous deadlines below came from a notification, not from a poll."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest
from support.waiting import eventually

from runtime import Envelope
from runtime.journal.postgres import PostgresJournal

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).resolve().parents[1]
DEADLINE = 20.0  # seconds: far below the 60 s poll, far above a notification's delivery


@pytest.fixture
async def url(postgres_url: str) -> AsyncIterator[str]:
    schema = f"t_notify_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_url}?schema={schema}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def event(entity_id: str, seq: int) -> Envelope:
    return Envelope(
        entity_type="tick",
        entity_id=entity_id,
        seq=seq,
        name="Tick",
        version=1,
        payload=b"{}",
        recorded_at=time.time_ns(),
    )


async def listening(journal: PostgresJournal) -> PostgresJournal:
    journal.idle_poll = 60.0
    await eventually(journal.hears_others, DEADLINE, "the journal listening")
    assert journal.tail_poll(0.1) == 60.0
    return journal


async def test_an_append_in_another_process_wakes_the_tail(url: str) -> None:
    async with PostgresJournal(url) as journal:
        await listening(journal)
        news = journal.next_append()
        assert await journal.read_all(1) == []
        env = {**os.environ, "PYTHONPATH": f"{TESTS.parent}:{TESTS}"}
        writer = subprocess.Popen(
            [sys.executable, "-m", "journal.pg_writer", url, "other", "1", "1"], cwd=TESTS, env=env
        )
        try:
            with anyio.fail_after(DEADLINE):
                await news.wait()
        finally:
            assert await anyio.to_thread.run_sync(writer.wait, 60) == 0
        assert [(e.entity_id, e.seq) for e in await journal.read_all(1)] == [("other-0", 1)]


async def test_both_write_paths_notify_and_a_journal_ignores_its_own_appends(url: str) -> None:
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        await listening(writer)
        # seq 1 of a new entity goes the general way (several statements), seq 2 the one-statement way
        for seq in (1, 2):
            news = tail.next_append()
            await writer.append([event("e", seq)], seq - 1)
            with anyio.fail_after(DEADLINE):
                await news.wait()
        assert tail.listener is not None and writer.listener is not None
        assert tail.listener.heard == 2
        await tail.append([event("f", 1)], 0)  # heard by the other instance, not by its own listener
        await eventually(
            lambda: writer.listener is not None and writer.listener.heard == 1, DEADLINE, "the writer hears it"
        )
        assert tail.listener.heard == 2


async def test_a_killed_listening_connection_reconnects_and_wakes_the_tail_again(url: str, postgres_url: str) -> None:
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        listener = tail.listener
        assert listener is not None and listener.pid is not None
        killed = listener.pid
        news = tail.next_append()
        admin = await asyncpg.connect(postgres_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", killed)
        finally:
            await admin.close()
        with anyio.fail_after(DEADLINE):
            await news.wait()  # the loss wakes the tail: it reads once and polls at its own pace meanwhile
        await eventually(lambda: tail.hears_others() and listener.pid != killed, DEADLINE, "listening again")
        assert listener.connections == 2
        news = tail.next_append()
        await writer.append([event("e", 1)], 0)
        with anyio.fail_after(DEADLINE):
            await news.wait()
        assert [e.entity_id for e in await tail.read_all(1)] == ["e"]


async def test_a_journal_that_does_not_listen_keeps_its_tailers_polling(url: str) -> None:
    async with PostgresJournal(url, listen=False) as journal:
        assert not journal.hears_others()
        assert journal.tail_poll(0.25) == 0.25


async def test_a_read_past_every_position_heard_of_asks_nothing_and_misses_nothing(url: str) -> None:
    """Notifications carry the transaction's last position: a tail read past it is answered empty
    without a query, and each append (one-statement path, general path, its own) moves it on."""
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        assert await tail.read_all(1) == []  # asks the store once
        assert await tail.read_all(1) == []
        assert tail.reads_skipped == 1
        expected = [("e", 1), ("e", 2), ("g", 1)]  # new entity: general path; known one: one statement
        for position, (entity, seq) in enumerate(expected, start=1):
            news = tail.next_append()
            await writer.append([event(entity, seq)], seq - 1)
            with anyio.fail_after(DEADLINE):
                await news.wait()
            assert [(e.entity_id, e.seq) for e in await tail.read_all(position)] == [(entity, seq)]
            skipped = tail.reads_skipped
            assert await tail.read_all(position + 1) == []
            assert tail.reads_skipped == skipped + 1
        await tail.append([event("own", 1)], 0)
        assert [e.entity_id for e in await tail.read_all(4)] == ["own"]
        assert [e.position for e in await tail.read_all(1)] == [1, 2, 3, 4]


async def test_an_append_nobody_hears_of_is_read_once_the_skipping_runs_out(url: str) -> None:
    """A writer whose notifications go elsewhere (as an older Memoir's, which sends none) is found
    by the first read `idle_poll` seconds after the last one that asked the store."""
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        tail.idle_poll = 1.0
        writer.channel = "memoir_appended.nobody"
        assert await tail.read_all(1) == []
        await writer.append([event("quiet", 1)], 0)

        async def found() -> bool:
            return [e.entity_id for e in await tail.read_all(1)] == ["quiet"]

        await eventually(found, DEADLINE, "the unheard append read")
        assert tail.reads_skipped >= 1
