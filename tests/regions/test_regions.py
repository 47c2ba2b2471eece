"""Two regions (NATS clusters of three JetStream nodes joined by gateways), a member in each:
events replicate both ways, commands sent in either region reach the entity's primary, reads and
views are served from the local replica, a gateway cut answers `unavailable` for the other
region's entities only, and after the heal every region's reads equal the primary's journal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from support.regions import REGIONS, Regions, settings_for, two_regions
from support.waiting import eventually

from runtime import Client, CommandError, Rejected, Unavailable
from runtime.serve.service.regions import RegionSender, move
from runtime.wire.nats import close_quietly, connect

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Regions]:
    async with two_regions(Path(tmp_path_factory.mktemp("regions"))) as r:
        yield r


async def journal_events(
    regions: Regions, region: str, entity_type: str, entity_id: str
) -> list[tuple[int, str, bytes]]:
    """What the primary's journal holds, as (seq, event name, payload)."""
    journal = regions.members[region].service.journal
    return [(e.seq, e.name, e.payload) for e in await journal.read(entity_type, entity_id)]


async def replica_events(
    regions: Regions, region: str, entity_type: str, entity_id: str
) -> list[tuple[int, str, bytes]]:
    items = await regions.members[region].region.events(entity_type, entity_id)
    return [(i.envelope.seq, i.envelope.name, i.envelope.payload) for i in items]


async def test_a_command_in_either_region_reaches_the_primary_and_every_region_reads_it(regions: Regions) -> None:
    async with Client(regions.url("us"), direct=False) as us, Client(regions.url("eu"), direct=False) as eu:
        assert (await us.send("account", "A1", "deposit", {"amount": 5})).result == 5  # pinned to eu: crosses
        assert (await eu.send("account", "A1", "deposit", {"amount": 7})).result == 12  # local in eu
        assert (await us.send("wallet", "W1", "deposit", {"amount": 3})).result == 3  # first write in us: us's
        assert (await eu.send("wallet", "W1", "deposit", {"amount": 4})).result == 7  # crosses to us
    assert len(await journal_events(regions, "eu", "account", "A1")) == 2
    assert await journal_events(regions, "us", "account", "A1") == []  # never written outside its primary
    assert len(await journal_events(regions, "us", "wallet", "W1")) == 2
    assert await journal_events(regions, "eu", "wallet", "W1") == []
    for region in REGIONS:
        part = regions.members[region].region

        async def replicated() -> bool:
            return (
                await replica_events(regions, region, "account", "A1")  # noqa: B023 - awaited at once
                == await journal_events(regions, "eu", "account", "A1")
                and await replica_events(regions, region, "wallet", "W1")  # noqa: B023
                == await journal_events(regions, "us", "wallet", "W1")
            )

        await eventually(replicated, what=f"both entities' events in {region}'s replica")
        assert await part.state("account", "A1") == ((await part.state("account", "A1"))[0], 2)
        assert (await part.state("account", "A1"))[0].balance == 12
        assert (await part.state("wallet", "W1"))[0].balance == 7
        assert (await part.state("account", "A1", seq=1))[0].balance == 5  # time travel, from the replica
        view = part.view("totals")

        async def in_view() -> bool:
            a, w = await view.get("account/A1"), await view.get("wallet/W1")  # noqa: B023
            return a is not None and w is not None and (a.balance, w.balance) == (12, 7)

        await eventually(in_view, what=f"{region}'s view sees entities of both regions")


async def test_dedupe_and_errors_are_the_primarys_across_regions(regions: Regions) -> None:
    async with Client(regions.url("us"), direct=False) as us:
        first = await us.send("account", "A2", "deposit", {"amount": 5}, command_id="c-1")
        again = await us.send("account", "A2", "deposit", {"amount": 5}, command_id="c-1")
        assert (first.result, first.seq) == (again.result, again.seq) == (5, 1)
        assert again.duplicate
        with pytest.raises(Rejected, match="amount must be positive"):
            await us.send("account", "A2", "deposit", {"amount": 0})
    assert len(await journal_events(regions, "eu", "account", "A2")) == 1


async def test_a_region_refuses_to_write_an_entity_written_elsewhere(regions: Regions) -> None:
    """Sent straight to us's own prefix (past the door), an eu-pinned account stores nothing in us."""
    async with Client(regions.url("us"), prefix="memoir.r.us", direct=False) as us_member:
        with pytest.raises(CommandError) as refused:
            await us_member.send("account", "A3", "deposit", {"amount": 5})
        assert refused.value.code == "overloaded"  # the fence's answer: send it through the door
    assert await journal_events(regions, "us", "account", "A3") == []


async def test_two_regions_racing_for_a_new_entity_agree_on_one_primary(regions: Regions) -> None:
    async with Client(regions.url("eu"), direct=False) as eu, Client(regions.url("us"), direct=False) as us:
        for n in range(3):
            entity_id = f"race-{n}"
            replies: list[int] = []

            async def first(client: Client, cid: str) -> None:
                replies.append((await client.send("wallet", entity_id, "deposit", {"amount": 1}, command_id=cid)).seq)  # noqa: B023

            async with anyio.create_task_group() as tg:
                tg.start_soon(first, eu, "from-eu")
                tg.start_soon(first, us, "from-us")
            assert sorted(replies) == [1, 2]  # both served, one after the other, by one writer
            stored = {r: len(await journal_events(regions, r, "wallet", entity_id)) for r in REGIONS}
            assert sorted(stored.values()) == [0, 2], stored


async def test_a_consumer_reacts_once_in_the_writing_region_and_reaches_the_targets_primary(regions: Regions) -> None:
    async with Client(regions.url("us"), direct=False) as us:
        await us.send("wallet", "B1", "deposit", {"amount": 100})  # first written in us: us's consumer reacts

    async def credited() -> bool:
        return len(await journal_events(regions, "eu", "account", "bonus-B1")) == 1

    await eventually(credited, what="the bonus written by the account's primary, eu")
    assert await journal_events(regions, "us", "account", "bonus-B1") == []
    sender = regions.members["us"].service.sender
    assert isinstance(sender, RegionSender) and sender.sent.get("eu", 0) >= 1  # us's consumer sent it across


class Load:
    """Deposits of 1 in a loop to a few entities through one region's client, until stopped (at most `limit`).

    Each command has its own command id and is retried with it until acknowledged, so the
    primary's journal must hold exactly one event per acknowledged command."""

    def __init__(self, client: Client, entity_type: str, ids: list[str], limit: int = 2000) -> None:
        self.client, self.entity_type, self.ids, self.limit = client, entity_type, ids, limit
        self.acked: dict[str, int] = dict.fromkeys(ids, 0)
        self.failures: list[str] = []
        self.stop = anyio.Event()

    @property
    def total(self) -> int:
        return sum(self.acked.values())

    async def run(self) -> None:
        for i in range(self.limit):
            if self.stop.is_set():
                return
            entity_id = self.ids[i % len(self.ids)]
            for _attempt in range(200):
                try:
                    cid = f"load-{i}"
                    await self.client.send(self.entity_type, entity_id, "deposit", {"amount": 1}, command_id=cid)
                    self.acked[entity_id] += 1
                    break
                except (CommandError, TimeoutError) as exc:
                    self.failures.append(repr(exc))
                    await anyio.sleep(0.05)
            await anyio.sleep(0.01)


async def settle(client: Client, entity_type: str, entity_id: str, command_id: str) -> None:
    """Send a deposit again with its command id until some answer says whether it landed."""
    for _attempt in range(100):
        try:
            await client.send(entity_type, entity_id, "deposit", {"amount": 1}, command_id=command_id)
            return
        except (Unavailable, TimeoutError):
            await anyio.sleep(0.1)
    raise AssertionError(f"{command_id} was never answered after the heal")


async def test_a_primary_moves_under_load_with_nothing_lost_or_doubled(regions: Regions) -> None:
    nc = await connect(regions.url("us"), timeout=10)
    try:
        async with Client(regions.url("us"), direct=False) as us, anyio.create_task_group() as tg:
            load = Load(us, "account", ["M1"])  # pinned to eu, sent in us: each command crosses until the move
            tg.start_soon(load.run)
            await eventually(lambda: load.total >= 20, what="load on the entity")
            first = await us.send("account", "M1", "deposit", {"amount": 1}, command_id="before-the-move")
            old, head = await move(nc, settings_for("us"), "account", "M1", "us")
            assert old == "eu" and head >= 20
            await eventually(lambda: load.total >= head + 20, what="load served by the new primary")
            load.stop.set()
            again = await us.send("account", "M1", "deposit", {"amount": 1}, command_id="before-the-move")
            assert again.duplicate and (again.result, again.seq) == (first.result, first.seq)  # the first reply
    finally:
        await close_quietly(nc)
    before = await journal_events(regions, "eu", "account", "M1")
    after = await journal_events(regions, "us", "account", "M1")
    assert [seq for seq, _, _ in before] == list(range(1, head + 1))  # the old primary stopped at head
    assert [seq for seq, _, _ in after] == list(range(1, load.total + 2))  # one event per acknowledged command
    assert after[:head] == before  # the new primary started at head + 1, on the same history
    for region in REGIONS:

        async def caught_up() -> bool:
            return await replica_events(regions, region, "account", "M1") == after  # noqa: B023

        await eventually(caught_up, what=f"{region}'s replica after the move")
        view = regions.members[region].region.view("totals")

        async def viewed() -> bool:
            row = await view.get("account/M1")  # noqa: B023
            return row is not None and (row.deposits, row.balance) == (len(after), len(after))

        await eventually(viewed, what=f"{region}'s view after the move: each event once")
    async with Client(regions.url("eu"), prefix="memoir.r.eu", direct=False) as eu_member:
        with pytest.raises(CommandError):  # the old primary refuses it now
            await eu_member.send("account", "M1", "deposit", {"amount": 1})
    assert len(await journal_events(regions, "eu", "account", "M1")) == head


async def test_a_gateway_cut_fails_only_the_other_regions_entities_and_the_heal_loses_nothing(regions: Regions) -> None:
    accounts = [f"E{i}" for i in range(3)]  # pinned to eu
    wallets = [f"U{i}" for i in range(3)]  # first written in us: us's
    async with (
        Client(regions.url("eu"), direct=False) as eu,
        Client(regions.url("us"), direct=False) as us,
        anyio.create_task_group() as tg,
    ):
        for w in wallets:  # claimed (and the claims cached in us) before the cut
            await us.send("wallet", w, "deposit", {"amount": 1}, command_id=f"open-{w}")
        eu_load, us_load = Load(eu, "account", accounts), Load(us, "wallet", wallets)
        tg.start_soon(eu_load.run)
        tg.start_soon(us_load.run)
        await eventually(lambda: eu_load.total > 5 and us_load.total > 5, what="load in both regions")

        regions.link.cut()
        before = (eu_load.total, us_load.total)
        try:
            for i in range(3):  # blackholed first, then no responders once the servers see the gateway gone
                with anyio.fail_after(9):  # answered by the region door (its 5 s), before the client's 10 s
                    with pytest.raises(Unavailable):
                        await us.send("account", "E0", "deposit", {"amount": 1}, command_id=f"cut-{i}", timeout=10)
            await eventually(
                lambda: eu_load.total > before[0] + 20 and us_load.total > before[1] + 20,
                what="local commands served in both regions during the cut",
            )
            assert eu_load.failures == [] and us_load.failures == []
        finally:
            regions.link.heal()  # the module's other tests share these regions
        await eventually(lambda: eu_load.total > before[0] + 40, what="load after the heal")
        eu_load.stop.set()
        us_load.stop.set()
        # `unavailable` after the door's timeout means "may have landed" (the proxy held the bytes and
        # let them through at the heal): settled as a client should, by sending again with the same id.
        for i in range(3):
            await settle(us, "account", "E0", f"cut-{i}")

    primaries = {("account", a): "eu" for a in accounts} | {("wallet", w): "us" for w in wallets}
    for (entity_type, entity_id), primary in primaries.items():
        stored = await journal_events(regions, primary, entity_type, entity_id)
        assert [seq for seq, _, _ in stored] == list(range(1, len(stored) + 1))
        acked = (eu_load if entity_type == "account" else us_load).acked[entity_id]
        extra = {"E0": 3, "U0": 1, "U1": 1, "U2": 1}.get(entity_id, 0)  # the cut's and the openings' commands
        assert len(stored) == acked + extra  # one event per acknowledged command
        for region in REGIONS:

            async def caught_up() -> bool:
                return await replica_events(regions, region, entity_type, entity_id) == stored  # noqa: B023

            await eventually(caught_up, timeout=60, what=f"{entity_type}/{entity_id} in {region} after the heal")
            view = regions.members[region].region.view("totals")

            async def viewed() -> bool:
                row = await view.get(f"{entity_type}/{entity_id}")  # noqa: B023
                return row is not None and row.deposits == len(stored)  # noqa: B023

            await eventually(viewed, timeout=30, what=f"{region}'s view of {entity_type}/{entity_id}")
