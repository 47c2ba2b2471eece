"""PostgreSQL wakes tailers in other processes: an append's transaction notifies the schema's
channel and every journal LISTENs on a connection of its own (runtime/journal/_pg_listen.py).

Each test sets the journal's safety poll (`idle_poll`) to 60 s, so an event that arrives within
the generous deadlines below came from a notification, not from a poll."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import msgspec
import pytest
from support.waiting import eventually

from runtime import Envelope
from runtime.journal.base import Page
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


async def test_a_burst_of_notifications_wakes_the_tailers_once_per_gather_and_never_misses_the_last(url: str) -> None:
    """A member hears every other member's commits: wake-ups are spaced `gather` apart, the ones
    that came meanwhile are taken together, and the trailing one always comes (a tailer whose
    poll is 60 s still reads every event)."""
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        listener = tail.listener
        assert listener is not None
        listener.gather = 0.3
        woke: list[float] = []
        wake = listener.wake

        def counted() -> None:
            woke.append(time.monotonic())
            wake()

        listener.wake = counted
        appends = 30

        async def write() -> None:
            for seq in range(1, appends + 1):  # one transaction, so one notification, each
                await writer.append([event("burst", seq)], seq - 1)

        async def follow() -> None:
            position, seen = 1, 0
            while seen < appends:
                news = tail.next_append()
                page = await tail.read_all(position)
                seen, position = seen + len(page), (page[-1].position + 1 if page else position)
                if not page:
                    await news.wait()

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await write()
        assert listener.heard == appends
        gaps = [b - a for a, b in itertools.pairwise(woke)]
        assert all(gap >= 0.9 * listener.gather for gap in gaps), gaps
        assert len(woke) < appends  # taken together (each wake-up spans several of the 30)


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


def typed(entity_type: str, entity_id: str, seq: int) -> Envelope:
    return msgspec.structs.replace(event(entity_id, seq), entity_type=entity_type)


async def test_a_read_of_types_nobody_wrote_asks_nothing_while_others_are_written(url: str) -> None:
    """Notifications name their events' types: a reader of other types (an outbox publisher's
    partition, a view) moves past those appends without a query, on both write paths, and reads
    its own types' events as soon as one is written; a notification without types (an older
    Memoir) counts for every type."""
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        assert (await tail.read_types(["b"], 1)).through == 0  # asks the store once
        for seq in (1, 2):  # a new entity (the general path), a known one (one statement)
            news = tail.next_append()
            await writer.append([typed("a", "x", seq)], seq - 1)
            with anyio.fail_after(DEADLINE):
                await news.wait()
            skipped = tail.reads_skipped
            page = await tail.read_types(["b"], seq)
            assert page == Page([], seq - 1) and tail.reads_skipped == skipped + 1  # "nothing new", unasked
            assert [(e.entity_id, e.seq) for e in (await tail.read_types(["a"], seq)).events] == [("x", seq)]
        news = tail.next_append()
        await writer.append([typed("b", "y", 1)], 0)
        with anyio.fail_after(DEADLINE):
            await news.wait()
        page = await tail.read_types(["b"], 1)  # it moves on by asking
        assert [(e.entity_type, e.position) for e in page.events] == [("b", 3)] and page.through == 3
        await tail.append([typed("c", "own", 1)], 0)  # its own append: known without a notification
        assert [e.entity_id for e in (await tail.read_types(["c"], 4)).events] == ["own"]
        skipped = tail.reads_skipped
        assert await tail.read_types(["b"], 5) == Page([], 4) and tail.reads_skipped == skipped + 1

        listener = tail.listener
        assert listener is not None
        heard = listener.heard
        admin = await asyncpg.connect(url.split("?")[0])
        try:
            await admin.execute("SELECT pg_notify($1, $2)", tail.channel, "older-memoir 4")
        finally:
            await admin.close()
        await eventually(lambda: listener.heard == heard + 1, DEADLINE, "the untyped notification heard")
        skipped = tail.reads_skipped
        await tail.read_types(["b"], 4)
        assert tail.reads_skipped == skipped  # it might hold a "b": the store is asked


async def test_a_skipped_read_never_moves_past_a_position_not_heard_of(url: str) -> None:
    """A read can see a commit before its notification arrives, or a writer may not notify at all
    (an older Memoir): a read skipped by type says "nothing new" and never moves past a position,
    and the read of those types `idle_poll` seconds on asks the store and finds the event."""
    async with PostgresJournal(url) as tail, PostgresJournal(url) as writer:
        await listening(tail)
        tail.idle_poll = 1.0
        await writer.append([typed("a", "x", 1)], 0)
        await eventually(lambda: tail.listener is not None and tail.listener.high == 1, DEADLINE, "heard")
        assert await tail.read_types(["b"], 1) == Page([], 1)  # asks the store
        writer.channel = "memoir_appended.nobody"  # its next appends go unheard, as if still on their way
        await writer.append([typed("b", "y", 1)], 0)
        await writer.append([typed("a", "x", 2)], 1)
        assert [e.position for e in await tail.read_all(1)] == [1, 2, 3]  # a read that saw them
        skipped = tail.reads_skipped
        assert await tail.read_types(["b"], 2) == Page([], 1) and tail.reads_skipped == skipped + 1

        async def found() -> bool:
            return [e.entity_id for e in (await tail.read_types(["b"], 2)).events] == ["y"]

        await eventually(found, DEADLINE, "the unheard event of its type read")
