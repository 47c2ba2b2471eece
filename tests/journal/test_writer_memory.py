"""What a journal's writer keeps in memory between writes answers as the store would.

Written for the SQL journals' tail cache and stream heads, and run on every journal: for the others
it is the same contract without a cache.

Reads of just-appended events add up to exactly what the store holds (with another writer's
appends interleaved, after a delete, from positions it does not hold), and the stream heads
SQLite's writer keeps are dropped as soon as another connection has written."""

from __future__ import annotations

import pytest
from support.journals import JournalFactory, ev

from runtime import Conflict, Envelope, Journal

pytestmark = pytest.mark.anyio


async def _read_on(journal: Journal, from_position: int, limit: int) -> list[Envelope]:
    """Read until an empty read (only that means no more), up to `limit` events."""
    out: list[Envelope] = []
    while len(out) < limit and (page := await journal.read_all(out[-1].position + 1 if out else from_position, limit)):
        out += page
    return out[:limit]


async def _same(mine: Journal, theirs: Journal, from_position: int, limit: int = 1000) -> list[int]:
    """Each writer, reading on, sees exactly what the other does (each serves its own appends from memory)."""
    here = await _read_on(mine, from_position, limit)
    assert here == await _read_on(theirs, from_position, limit)
    if here:
        assert await mine.read_all(from_position, limit), "a read is empty only when nothing is there"
    return [e.position for e in here]


async def test_reads_after_appends_match_the_store_across_writers(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as mine, journal_factory.open() as theirs:
        await mine.append([ev("a", 1), ev("a", 2, command_id="c", reply=b"1")], 0)
        await theirs.append([ev("b", 1)], 0)  # a position this process never held
        await mine.append([ev("a", 3)], 2)
        positions = await _same(mine, theirs, 1)
        assert len(positions) == 4
        for start in positions:
            await _same(mine, theirs, start)
            await _same(mine, theirs, start, limit=1)
        await _same(mine, theirs, positions[-1] + 1)  # nothing yet

        await mine.delete("thing", "a", to_seq=2)
        remaining = await _same(mine, theirs, 1)
        assert len(remaining) == 2
        await mine.append([ev("a", 4)], 3)
        for start in [*remaining, remaining[-1] + 1]:
            await _same(mine, theirs, start)


async def test_another_writers_append_is_seen_by_the_next_write(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as mine, journal_factory.open() as theirs:
        await mine.append([ev("a", 1)], 0)
        await mine.append([ev("a", 2)], 1)  # the writer now holds a's head
        await theirs.append([ev("a", 3)], 2)
        with pytest.raises(Conflict):
            await mine.append([ev("a", 3)], 2)
        await mine.append([ev("a", 4)], 3)
        await mine.save_checkpoint("x", 1)  # a write that keeps the heads
        await theirs.delete("thing", "a")
        await theirs.append([ev("b", 1)], 0)
        # the JetStream journal sees the deletion as a moved head: refused too, as a conflict
        refused = "deleted|expected seq" if journal_factory.backend.name == "nats" else "deleted"
        with pytest.raises(Exception, match=refused):
            await mine.append([ev("a", 5)], 4)
        assert [e.seq for e in await mine.read("thing", "a")] == []
