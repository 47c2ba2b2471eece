"""Two regions (NATS clusters of three JetStream nodes joined by gateways), a member in each:
events replicate both ways, commands sent in either region reach the entity's primary, reads and
views are served from the local replica, a gateway cut answers `unavailable` for the other
region's entities only, and after the heal every region's reads equal the primary's journal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.regions import REGIONS, Regions, two_regions
from support.waiting import eventually

from runtime import Client, Rejected

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
