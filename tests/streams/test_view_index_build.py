"""A view catching up from the journal into no rows of its own goes without its declared indexes
and builds them once at the end (`ViewRunner._suspends_indexes`, `ViewStore.suspend_indexes`):
absent during the catch-up, present and used after it, queries correct meanwhile (unhinted), a
failed catch-up or a crash leaving them built, and a small catch-up or one into rows keeping them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from runtime import Effect, EventSourcedEntity, Rows, SqliteJournal, applies, command, on
from runtime.model.entity import model_of
from runtime.model.envelope import Envelope
from runtime.streams.query import Eq, Ge, Query, plan
from runtime.streams.view import View, ViewQuery, ViewRunner
from runtime.streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore, ViewStore, Work

pytestmark = pytest.mark.anyio

EVENTS = 2000
THRESHOLD = 1000  # positions behind from which a catch-up into no rows builds the indexes at its end


class Slot(msgspec.Struct):
    owner: str
    size: int


class Booked(msgspec.Struct):
    key: str
    owner: str
    size: int


class Ledger(EventSourcedEntity[int], name="ixledger"):
    initial = 0

    @command
    def book(self, n: int, key: str, owner: str, size: int) -> Effect[int]:
        return self.persist(Booked(key, owner, size)).reply(lambda s: s)

    @applies
    def booked(self, n: int, e: Booked) -> int:
        return n + 1


class Slots(View[Slot], name="slots", sources=[Ledger], indexes=["owner", "size"]):
    @on
    def booked(self, rows: Rows[Slot], e: Booked) -> None:
        rows.put(e.key, Slot(e.owner, e.size))


def _slot(i: int) -> Slot:
    return Slot(f"o{i % 37}", (i * 7919) % 1000)


def _booked(encode: Callable[[Booked], bytes], i: int, now: int) -> Envelope:
    slot = _slot(i)
    payload = encode(Booked(f"k{i:05}", slot.owner, slot.size))
    return Envelope(
        entity_type="ixledger", entity_id="l", seq=i + 1, name="Booked", version=1, payload=payload, recorded_at=now
    )


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    async with SqliteJournal(tmp_path / "j.db") as j:
        codec = model_of(Ledger).codec
        now = time.time_ns()
        for start in range(0, EVENTS, 500):  # one entity's events, 500 an append
            envs = [_booked(codec.encode, i, now) for i in range(start, start + 500)]
            await j.append(envs, start)
        yield j


def _runner(store: ViewStore, journal: SqliteJournal, builds: int = THRESHOLD) -> ViewRunner:
    return ViewRunner(
        Slots, store, NATS(), prefix="ix", journal=journal, catchup_behind=100, catchup_page=200,
        catchup_transaction=200, catchup_builds_indexes=builds,
    )  # fmt: skip


async def built(store: ViewStore) -> set[str] | None:
    """The names of the view indexes in the store's catalog (None: the memory store has none)."""
    if isinstance(store, SqliteViewStore):
        rows = await store._run(
            lambda c: c.execute("SELECT name FROM sqlite_master WHERE type='index' AND name LIKE 'vq_%'").fetchall()
        )
        return {r[0] for r in rows}
    if isinstance(store, PostgresViewStore):
        async with store._conn() as conn:
            found = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname=$1 AND indexname LIKE 'vq_%'", store.schema
            )
        return {r[0] for r in found}
    assert isinstance(store, MemoryViewStore)
    return None


NAMES = {f"vq_{i.digest('slots')}" for i in Slots.query_indexes}
BY_FIELD = {i.fields[0].name: f"vq_{i.digest('slots')}" for i in Slots.query_indexes}


async def _scanned(store: ViewStore) -> dict[str, Slot]:
    out: dict[str, Slot] = {}
    after = ""
    while page := await store.scan("slots", after=after, limit=1000):
        out.update((k, msgspec.json.decode(v, type=Slot)) for k, v in page)
        after = page[-1][0]
    return out


async def _queries_agree_with_a_scan(q: ViewQuery[Slot]) -> None:
    """Indexed queries (and a count) answer what filtering every row of the view answers."""
    rows = await _scanned(q.store)
    page = await q.query('owner = "o3"', limit=1000)
    assert [k for k, _ in page.rows] == sorted(k for k, r in rows.items() if r.owner == "o3")
    ranged = await q.query("size >= 990", order_by=["size"], limit=1000)
    want = sorted((r.size, k) for k, r in rows.items() if r.size >= 990)
    assert [k for k, _ in ranged.rows] == [k for _, k in want]
    assert await q.count('owner = "o5"') == sum(r.owner == "o5" for r in rows.values())


async def _indexes_used(store: ViewStore) -> None:
    """Both indexes are in the catalog and the planner names them."""
    if isinstance(store, MemoryViewStore):
        return
    assert await built(store) == NAMES
    assert isinstance(store, SqliteViewStore | PostgresViewStore)
    if isinstance(store, PostgresViewStore):
        async with store._conn() as conn:
            await conn.execute(f"ANALYZE {store.schema}.view_rows")
    equality = await store.explain("slots", plan("slots", Slots.query_fields, Query(where=Eq("owner", "o3"))))
    assert BY_FIELD["owner"] in equality, equality
    ranged = await store.explain(
        "slots", plan("slots", Slots.query_fields, Query(where=Ge("size", 990), order_by=["size"], limit=10))
    )
    assert BY_FIELD["size"] in ranged, ranged


class _Watched:
    """The store's transactions, each first looking at the catalog and querying the view (from
    inside the catch-up), and failing at `fail_at` if given."""

    def __init__(self, store: ViewStore, runner: ViewRunner, fail_at: int | None = None) -> None:
        self.runner = runner
        self.fail_at = fail_at
        self.catalogs: list[set[str] | None] = []
        self.transact = store.transact
        store.transact = self  # type: ignore[method-assign]

    async def __call__(self, view: str, work: Work) -> None:
        self.catalogs.append(await built(self.runner.store))
        if len(self.catalogs) == self.fail_at:
            raise RuntimeError("injected: the catch-up fails mid-way")
        if len(self.catalogs) == 3:  # rows applied already, the indexes (if suspended) still away
            await _queries_agree_with_a_scan(self.runner.query)
        await self.transact(view, work)


async def test_a_catch_up_from_empty_builds_the_indexes_at_its_end(store: ViewStore, journal: SqliteJournal) -> None:
    runner = _runner(store, journal)
    await runner.query.declare()
    if not isinstance(store, MemoryViewStore):
        assert await built(store) == NAMES, "declared before the catch-up"
    watched = _Watched(store, runner)
    assert await runner.catch_up_from_journal() == EVENTS
    assert len(watched.catalogs) >= 5
    if not isinstance(store, MemoryViewStore):
        assert all(names == set() for names in watched.catalogs), "no index during the catch-up"
    await _indexes_used(store)
    await _queries_agree_with_a_scan(runner.query)
    assert len(await _scanned(store)) == EVENTS


async def test_a_failed_catch_up_leaves_the_indexes_built(store: ViewStore, journal: SqliteJournal) -> None:
    runner = _runner(store, journal)
    await runner.query.declare()
    watched = _Watched(store, runner, fail_at=4)
    with pytest.raises(RuntimeError, match="injected"):
        await runner.catch_up_from_journal()
    if not isinstance(store, MemoryViewStore):
        assert watched.catalogs[-1] == set(), "it failed with the indexes suspended"
    await _indexes_used(store)
    await _queries_agree_with_a_scan(runner.query)
    assert 0 < len(await _scanned(store)) < EVENTS


async def test_a_start_builds_the_indexes_a_crash_left_suspended(store: ViewStore, journal: SqliteJournal) -> None:
    """Suspended and never built (a crash, or a stop with no time to build them): the next start's
    declare builds them, in a new process or in this one (`run` declares again)."""
    runner = _runner(store, journal, builds=10**9)  # its catch-up keeps the indexes
    await runner.query.declare()
    await store.suspend_indexes("slots")
    await runner.query.declare()  # a query's: once per process, the catalog not read again
    if not isinstance(store, MemoryViewStore):
        assert await built(store) == set()
    await runner.query.declare(again=True)  # what each start of the runner does
    if not isinstance(store, MemoryViewStore):
        assert await built(store) == NAMES, "built again"
    await store.suspend_indexes("slots")
    await ViewQuery(Slots, store).declare()  # another process's first query, or its start
    if not isinstance(store, MemoryViewStore):
        assert await built(store) == NAMES, "built again"
    assert await runner.catch_up_from_journal() == EVENTS
    await _indexes_used(store)
    await _queries_agree_with_a_scan(runner.query)


@pytest.mark.parametrize("case", ["small", "rows"])
async def test_a_small_catch_up_or_one_into_rows_keeps_the_indexes(
    store: ViewStore, journal: SqliteJournal, case: str
) -> None:
    """Below the threshold, or into a view that has rows already: the indexes stay throughout."""
    runner = _runner(store, journal, builds=EVENTS + 1 if case == "small" else THRESHOLD)
    await runner.query.declare()
    if case == "rows":
        before: Mapping[str, bytes | None] = {"a-row": msgspec.json.encode(Slot("o3", 1))}
        await store.transact("slots", lambda _: (before, {}))
    watched = _Watched(store, runner)
    assert await runner.catch_up_from_journal() == EVENTS
    if not isinstance(store, MemoryViewStore):
        assert all(names == NAMES for names in watched.catalogs), "the indexes never left"
    await _indexes_used(store)
    await _queries_agree_with_a_scan(runner.query)
