"""The journal conformance suite (in the spirit of Akka's persistence TCK): every backend, same rules."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import msgspec
import pytest
from support.journals import JournalFactory, ev

from runtime import (
    Conflict,
    EntityDeleted,
    Envelope,
    Journal,
    JournalError,
    Snapshot,
)
from runtime.journal.base import Selection

pytestmark = pytest.mark.anyio


def evs(entity_id: str, first: int, n: int, **kw: object) -> list[Envelope]:
    return [ev(entity_id, first + i, **kw) for i in range(n)]  # type: ignore[arg-type]


async def read_everything(journal: Journal) -> list[Envelope]:
    out: list[Envelope] = []
    while page := await journal.read_all(out[-1].position + 1 if out else 1, limit=500):
        out.extend(page)
    return out


async def test_append_assigns_increasing_positions_and_reads_back(journal: Journal) -> None:
    stored = await journal.append(evs("a", 1, 3, payload=b'{"x":1}', command_id="c1", reply=b"7"), 0)
    assert [e.seq for e in stored] == [1, 2, 3]
    assert stored[0].position >= 1 and [e.position for e in stored] == list(
        range(stored[0].position, stored[0].position + 3)
    )
    more = await journal.append([ev("b", 1)], 0)
    assert more[0].position > stored[-1].position
    back = await journal.read("thing", "a")
    assert back == stored
    assert back[2].command_id == "c1" and back[2].reply == b"7" and back[0].payload == b'{"x":1}'
    assert await journal.head("thing", "a") == 3
    assert await journal.last_position() == more[0].position


async def test_wrong_expected_seq_is_a_conflict_and_stores_nothing(journal: Journal) -> None:
    await journal.append(evs("a", 1, 2), 0)
    before = await journal.last_position()
    with pytest.raises(Conflict) as info:
        await journal.append([ev("a", 2)], 1)
    assert info.value.expected_seq == 1 and info.value.entity_id == "a"
    with pytest.raises(Conflict):
        await journal.append([ev("a", 1)], 0)  # a second "first" event
    assert await journal.last_position() == before
    assert [e.seq for e in await journal.read("thing", "a")] == [1, 2]


async def test_two_writers_with_the_same_expectation_one_wins(journal: Journal) -> None:
    await journal.append([ev("a", 1)], 0)
    outcomes: list[str] = []

    async def writer(tag: str) -> None:
        try:
            await journal.append([ev("a", 2, payload=f'"{tag}"'.encode())], 1)
            outcomes.append(tag)
        except Conflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for tag in ("left", "right"):
            tg.start_soon(writer, tag)
    assert min(outcomes) == "conflict" and len([o for o in outcomes if o != "conflict"]) == 1
    winner = next(o for o in outcomes if o != "conflict")
    assert [e.payload for e in await journal.read("thing", "a")] == [b"{}", f'"{winner}"'.encode()]


async def test_multi_event_append_is_all_or_nothing(journal: Journal) -> None:
    await journal.append(evs("a", 1, 3), 0)
    await journal.append([ev("b", 1)], 0)
    with pytest.raises(Conflict):
        await journal.append(evs("a", 3, 3), 2)  # stale: none of the three may land
    assert await journal.head("thing", "a") == 3
    assert len(await journal.read("thing", "a")) == 3
    assert len(await read_everything(journal)) == 4


async def test_a_malformed_append_is_refused_before_storage(journal: Journal) -> None:
    with pytest.raises(JournalError):
        await journal.append([ev("a", 1), ev("a", 3)], 0)  # seqs must run on from expected_seq
    with pytest.raises(JournalError):
        await journal.append([ev("a", 1), ev("b", 2)], 0)  # one entity per append
    with pytest.raises(JournalError):
        await journal.append([], 0)
    assert await journal.last_position() == 0


async def test_read_ranges(journal: Journal) -> None:
    await journal.append(evs("a", 1, 10), 0)
    assert [e.seq for e in await journal.read("thing", "a", from_seq=4)] == list(range(4, 11))
    assert [e.seq for e in await journal.read("thing", "a", from_seq=4, to_seq=6)] == [4, 5, 6]
    assert [e.seq for e in await journal.read("thing", "a", from_seq=2, limit=3)] == [2, 3, 4]
    assert await journal.read("thing", "a", from_seq=11) == []
    assert await journal.read("thing", "nobody") == []
    assert await journal.head("thing", "nobody") == 0


async def test_read_all_is_ordered_and_gap_free_under_concurrent_writers(journal: Journal) -> None:
    async def appender(w: int) -> None:
        for i in range(25):
            entity = f"e{(w * 7 + i) % 10}"
            while True:  # writers share entities: retry conflicts like an actor reloading would
                head = await journal.head("thing", entity)
                try:
                    await journal.append(evs(entity, head + 1, 1 + i % 2), head)
                    break
                except Conflict:
                    await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for w in range(20):
            tg.start_soon(appender, w)
    everything = await read_everything(journal)
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions)), "strictly increasing"
    assert positions == list(range(positions[0], positions[0] + len(positions))), "no gaps"
    assert len(everything) == sum(1 + i % 2 for i in range(25)) * 20
    for entity in {e.entity_id for e in everything}:
        seqs = [e.seq for e in everything if e.entity_id == entity]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_read_all_pages(journal: Journal) -> None:
    for i in range(7):
        await journal.append(evs(f"e{i}", 1, 3), 0)
    first = await journal.read_all(1, limit=5)
    rest = await journal.read_all(first[-1].position + 1, limit=100)
    assert len(first) == 5 and len(rest) == 16
    assert await journal.read_all(rest[-1].position + 1) == []


async def test_snapshots_latest_wins_and_older_can_go(journal: Journal) -> None:
    await journal.append(evs("a", 1, 30), 0)
    assert await journal.load_snapshot("thing", "a") is None
    for seq in (10, 20, 30):
        await journal.save_snapshot(
            Snapshot(
                entity_type="thing",
                entity_id="a",
                seq=seq,
                payload=f'{{"n":{seq}}}'.encode(),
                recorded_at=time.time_ns(),
            )
        )
    latest = await journal.load_snapshot("thing", "a")
    assert latest is not None and latest.seq == 30 and latest.payload == b'{"n":30}'
    at_25 = await journal.load_snapshot("thing", "a", max_seq=25)
    assert at_25 is not None and at_25.seq == 20
    await journal.delete_snapshots("thing", "a", 20)
    assert await journal.load_snapshot("thing", "a", max_seq=25) is None
    assert (await journal.load_snapshot("thing", "a")).seq == 30  # type: ignore[union-attr]

    rec = await journal.recover("thing", "a")
    assert rec.snapshot is not None and rec.snapshot.seq == 30 and rec.events == [] and rec.head == 30


async def test_recover_returns_snapshot_then_later_events(journal: Journal) -> None:
    await journal.append(evs("a", 1, 5), 0)
    await journal.save_snapshot(
        Snapshot(entity_type="thing", entity_id="a", seq=3, payload=b"{}", recorded_at=time.time_ns())
    )
    rec = await journal.recover("thing", "a")
    assert rec.snapshot is not None and rec.snapshot.seq == 3
    assert [e.seq for e in rec.events] == [4, 5] and rec.head == 5 and not rec.deleted
    fresh = await journal.recover("thing", "never")
    assert fresh.snapshot is None and fresh.events == [] and fresh.head == 0


async def test_deleting_events_never_lowers_the_head(journal: Journal) -> None:
    await journal.append(evs("a", 1, 5), 0)
    await journal.delete("thing", "a", to_seq=5)
    assert await journal.read("thing", "a") == []
    assert await journal.head("thing", "a") == 5
    with pytest.raises(Conflict):
        await journal.append([ev("a", 1)], 0)  # seq 1 must never be reused
    await journal.append([ev("a", 6)], 5)
    assert [e.seq for e in await journal.read("thing", "a")] == [6]


async def test_deleting_an_entity_is_a_tombstone(journal: Journal) -> None:
    await journal.append(evs("a", 1, 3), 0)
    await journal.append(evs("b", 1, 2), 0)
    await journal.save_snapshot(
        Snapshot(entity_type="thing", entity_id="a", seq=3, payload=b"{}", recorded_at=time.time_ns())
    )
    await journal.delete("thing", "a")
    assert await journal.is_deleted("thing", "a") and not await journal.is_deleted("thing", "b")
    assert await journal.read("thing", "a") == [] and await journal.load_snapshot("thing", "a") is None
    assert await journal.head("thing", "a") == 3
    with pytest.raises(EntityDeleted):
        await journal.append([ev("a", 4)], 3)
    assert [e.entity_id for e in await read_everything(journal)] == ["b", "b"]
    assert (await journal.recover("thing", "a")).deleted


async def test_one_megabyte_payload(journal: Journal) -> None:
    big = msgspec.json.encode({"blob": "x" * (1024 * 1024)})
    await journal.append([ev("a", 1, payload=big)], 0)
    assert (await journal.read("thing", "a"))[0].payload == big


async def test_a_hundred_thousand_events_in_one_entity(journal: Journal) -> None:
    n = 100_000
    for first in range(1, n + 1, 1000):
        await journal.append(evs("long", first, 1000), first - 1)
    back = await journal.read("thing", "long")
    assert [e.seq for e in back] == list(range(1, n + 1))
    rec = await journal.recover("thing", "long")
    assert len(rec.events) == n and rec.head == n


@pytest.mark.parametrize("odd", ["with.dots", "with spaces", "ünïcødé ✓", "a/b/c", "%2E", "*>", "'quote\""])
async def test_ids_with_odd_characters(journal: Journal, odd: str) -> None:
    await journal.append([ev(odd, 1, entity_type="odd")], 0)
    await journal.append([ev(odd + "x", 1, entity_type="odd")], 0)
    assert [e.entity_id for e in await journal.read("odd", odd)] == [odd]
    assert await journal.head("odd", odd) == 1


async def test_checkpoints(journal: Journal) -> None:
    assert await journal.load_checkpoint("reader") == 0
    await journal.save_checkpoint("reader", 42)
    await journal.save_checkpoint("other", 7)
    await journal.save_checkpoint("reader", 43)
    assert await journal.load_checkpoint("reader") == 43 and await journal.load_checkpoint("other") == 7


async def test_close_and_reopen_loses_nothing(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as j:
        await j.append(evs("a", 1, 3, command_id="c", reply=b'"r"'), 0)
        await j.append(evs("b", 1, 1), 0)
        await j.save_checkpoint("reader", 2)
        await j.delete("thing", "b")
        before = await read_everything(j)
    async with journal_factory.open() as j:
        assert await read_everything(j) == before
        assert await j.head("thing", "a") == 3 and await j.is_deleted("thing", "b")
        assert await j.load_checkpoint("reader") == 2
        stored = await j.append([ev("a", 4)], 3)
        assert stored[0].position > before[-1].position, "positions continue, never reused"


async def test_next_append_wakes_a_tailer(journal: Journal) -> None:
    news = journal.next_append()
    assert not news.is_set()
    await journal.append([ev("a", 1)], 0)
    assert news.is_set()


async def test_the_principal_round_trips(journal_factory: JournalFactory) -> None:
    """Who asked (the audit trail) is stored with each event and read back by every read."""
    who = "user:ann/ä b.c"  # characters a NATS header or subject token cannot carry as they are
    async with journal_factory.open() as j:
        await j.append([msgspec.structs.replace(e, principal=who) for e in evs("a", 1, 2)], 0)
        await j.append(evs("a", 3, 1), 2)  # from inside the process: no principal
        assert [e.principal for e in await j.read("thing", "a")] == [who, who, None]
        assert [e.principal for e in await read_everything(j)] == [who, who, None]
        assert [e.principal for e in (await j.recover("thing", "a")).events] == [who, who, None]
    async with journal_factory.open() as j:
        assert [e.principal for e in await j.read("thing", "a")] == [who, who, None]


async def read_types_to_the_end(
    journal: Journal, types: set[str] | Selection, limit: int = 7
) -> tuple[list[Envelope], int]:
    """Every event of `types` (or of a selection), page by page, as a tailer reads them; and how far
    the reads looked."""
    selection = types if isinstance(types, Selection) else Selection(frozenset(types))
    out: list[Envelope] = []
    through = 0
    while True:
        if isinstance(types, Selection):
            page = await journal.read_selected(types, through + 1, limit)
        else:
            page = await journal.read_types(types, through + 1, limit)
        assert len(page.events) <= limit
        assert all(selection.keeps(e) for e in page.events)
        assert all(through < e.position <= page.through for e in page.events), "within what it says it looked at"
        if len(page.events) == limit:
            assert page.through == page.events[-1].position, "a full read looked no further than its last event"
        if page.through == through:
            assert not page.events, "a read that looked no further found nothing"
            return out, through
        assert page.through > through
        out.extend(page.events)
        through = page.through


async def test_read_types_reads_only_those_types_in_position_order(journal_factory: JournalFactory) -> None:
    """A reader of some types gets exactly their events, in position order, past the others' events;
    from the writer itself (its recent appends) and from another instance (the store)."""
    async with journal_factory.open() as j:

        async def appender(w: int) -> None:
            for i in range(12):
                kind = ("a", "b", "c")[(w + i) % 3]
                entity = f"e{w}"
                head = await j.head(kind, entity)
                await j.append(evs(entity, head + 1, 1 + i % 2, entity_type=kind), head)

        async with anyio.create_task_group() as tg:
            for w in range(6):
                tg.start_soon(appender, w)
        everything = await read_everything(j)
        last = await j.last_position()
        for types in ({"a"}, {"b", "c"}, {"nobody"}):
            got, through = await read_types_to_the_end(j, types)
            assert got == [e for e in everything if e.entity_type in types]
            assert through == last, "it looked to the end of the journal"
    async with journal_factory.open() as j:
        for types in ({"a"}, {"a", "c"}):
            got, through = await read_types_to_the_end(j, types, limit=1000)
            assert got == [e for e in everything if e.entity_type in types] and through == last


async def test_read_selected_reads_types_names_and_first_events_in_position_order(
    journal_factory: JournalFactory,
) -> None:
    """A selection (the timer relay's: some names of any type, some types, every entity's first
    event) reads exactly those events, in position order, from the writer itself and from the store."""
    async with journal_factory.open() as j:
        for w in range(4):
            for seq in range(1, 7):
                kind, name = ("a", "b")[w % 2], ("Tick", "Tock", "Tick")[seq % 3]
                await j.append([ev(f"e{w}", seq, entity_type=kind, name=name)], seq - 1)
        everything = await read_everything(j)
        last = await j.last_position()
        selections = (
            Selection(names=frozenset({"Tock"})),
            Selection(firsts=True),
            Selection(types=frozenset({"a"}), names=frozenset({"Tock", "nobody"}), firsts=True),
        )
        for selection in selections:
            got, through = await read_types_to_the_end(j, selection)
            assert got == [e for e in everything if selection.keeps(e)] and got
            assert through == last, "it looked to the end of the journal"
        assert await j.read_selected(Selection(), 1) == ([], 0)  # nothing selected: nothing read
    async with journal_factory.open() as j:
        for selection in selections:
            got, through = await read_types_to_the_end(j, selection, limit=1000)
            assert got == [e for e in everything if selection.keeps(e)] and through == last


async def test_read_types_finds_what_is_appended_after_other_types(journal: Journal) -> None:
    """A reader of one type whose reads passed only the others' events finds its next event."""
    await journal.append(evs("x", 1, 5, entity_type="other"), 0)
    page = await journal.read_types({"mine"}, 1)
    assert page.events == [] and page.through == await journal.last_position()
    assert await journal.read_types({"mine"}, page.through + 1) == (page.events, page.through)  # nothing new
    await journal.append(evs("x", 6, 2, entity_type="other"), 5)
    (stored,) = await journal.append([ev("m", 1, entity_type="mine")], 0)
    following = await journal.read_types({"mine"}, page.through + 1)
    assert following.events == [stored] and following.through >= stored.position
    assert await journal.read_types({"mine"}, stored.position, limit=1) == ([stored], stored.position)
    assert (await journal.read_types({"mine"}, stored.position + 1)).events == []
