"""A region lost (cut off from the others): the operator promotes another for its entities, which
starts after what its replica holds; when the lost region returns, it refuses writes for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.regions import settings_for, two_regions
from support.waiting import eventually

from runtime import Client, CommandError
from runtime.serve.service.regions import move
from runtime.wire.nats import close_quietly, connect

pytestmark = pytest.mark.anyio


async def test_a_promoted_region_writes_on_and_the_returning_one_refuses(tmp_path: Path) -> None:
    async with two_regions(tmp_path, home="us") as regions:  # the claims live in the region that survives
        eu_part, us_part = regions.members["eu"], regions.members["us"]
        async with Client(regions.url("eu"), direct=False) as eu:
            for _ in range(5):
                await eu.send("account", "P1", "deposit", {"amount": 1})  # pinned to eu

        async def replicated() -> bool:
            return len(await us_part.region.events("account", "P1")) == 5

        await eventually(replicated, what="eu's events in us's replica before the loss")
        regions.link.cut()  # eu is lost to us
        nc = await connect(regions.url("us"), timeout=10)
        try:
            old, head = await move(nc, settings_for("us", home="us"), "account", "P1", "us", lost=True)
        finally:
            await close_quietly(nc)
        assert (old, head) == ("eu", 5)
        async with Client(regions.url("us"), direct=False) as us:
            assert (await us.send("account", "P1", "deposit", {"amount": 1})).seq == 6  # us writes it now

        regions.link.heal()  # eu returns
        async with Client(regions.url("eu"), prefix="memoir.r.eu", direct=False) as eu_member:

            async def refused() -> bool:
                try:
                    await eu_member.send("account", "P1", "deposit", {"amount": 1}, timeout=5)
                except CommandError as exc:
                    return exc.code == "overloaded"  # its fence: the entity is written elsewhere
                raise AssertionError("eu wrote an entity promoted away from it")

            await eventually(refused, what="eu refusing the entity it no longer holds")
        async with Client(regions.url("eu"), direct=False) as eu:

            async def routed_to_us() -> bool:
                try:
                    return (await eu.send("account", "P1", "deposit", {"amount": 1}, command_id="after")).seq == 7
                except CommandError:
                    return False  # eu's door may still be learning the claim

            await eventually(routed_to_us, timeout=30, what="a command sent in eu written by us")
        assert len(await eu_part.service.journal.read("account", "P1")) == 5  # nothing written in eu after the loss
        assert [e.seq for e in await us_part.service.journal.read("account", "P1")] == [1, 2, 3, 4, 5, 6, 7]
        stored = [(e.seq, e.payload) for e in await us_part.service.journal.read("account", "P1")]
        for part in (eu_part, us_part):

            async def caught_up() -> bool:
                items = await part.region.events("account", "P1")  # noqa: B023
                return [(i.envelope.seq, i.envelope.payload) for i in items] == stored

            await eventually(caught_up, what=f"{part.name}'s replica equal to the new primary's journal")
