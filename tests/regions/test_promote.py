"""A region lost (cut off from the others): the operator promotes another for its entities, which
starts after what its replica holds; when the lost region returns, it refuses writes for them, and
the events it wrote that never reached the promoted region (the RPO) are applied nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.regions import Member, settings_for, two_regions
from support.waiting import eventually

from runtime import Client, CommandError
from runtime.serve.service.regions import move
from runtime.serve.service.regions.orphans import entity_replica
from runtime.serve.service.regions.replica import direct_batch, source_stream
from runtime.wire.nats import close_quietly, connect
from runtime.wire.protocol import event_subject

pytestmark = pytest.mark.anyio

ORPHAN = 100  # the amount of each deposit eu stores while cut off: never part of the entity's history


async def held_from_eu(part: Member, entity_id: str) -> list[int]:
    """The seqs of eu's events of the account in `part`'s replica stream, as stored (before any reader)."""
    subject = event_subject("memoir", "account", entity_id)
    held = await direct_batch(part.region.nc, part.region.stream, start=1, subject=subject)
    return [
        int((m.headers or {})["Memoir-Seq"])
        for _, m in held
        if source_stream(m.headers) == "MEMOIR_R_EU_EVENTS_ACCOUNT"
    ]


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
        async with Client(regions.url("eu"), prefix="memoir.r.eu", direct=False) as eu_member:
            for _ in range(3):  # eu goes on writing what us will never have: seqs 6-8, the RPO
                await eu_member.send("account", "P1", "deposit", {"amount": ORPHAN})

        async def in_eu_view() -> bool:
            row = await eu_part.region.view("totals").get("account/P1")
            return row is not None and row.deposits == 8

        await eventually(in_eu_view, what="eu's view applying eu's own events during the cut")
        nc = await connect(regions.url("us"), timeout=10)
        try:
            old, head = await move(nc, settings_for("us", home="us"), "account", "P1", "us", lost=True)
        finally:
            await close_quietly(nc)
        assert (old, head) == ("eu", 5)
        async with Client(regions.url("us"), direct=False) as us:
            for seq in (6, 7, 8):  # us writes it now, from seq 6: the same seqs as eu's lost ones
                assert (await us.send("account", "P1", "deposit", {"amount": 1})).seq == seq
        # Each region's ids name it (`{type}/{id}/{seq}@{region}`): the replicas keep both regions'
        # seq 6-8 however close together they arrive (the heal comes at once), and their readers choose.
        regions.link.heal()  # eu returns
        await eventually(
            lambda: not eu_part.region.primaries.admits("account", "P1"), what="eu reading the claim that moved P1"
        )
        async with Client(regions.url("eu"), prefix="memoir.r.eu", direct=False) as eu_member:
            try:
                await eu_member.send("account", "P1", "deposit", {"amount": 1}, timeout=5)
                raise AssertionError("eu wrote an entity promoted away from it")
            except CommandError as exc:
                assert exc.code == "overloaded"  # its fence: the entity is written elsewhere
        async with Client(regions.url("eu"), direct=False) as eu:

            async def routed_to_us() -> bool:
                try:
                    return (await eu.send("account", "P1", "deposit", {"amount": 1}, command_id="after")).seq == 9
                except CommandError:
                    return False  # eu's door may still be learning the claim

            await eventually(routed_to_us, timeout=30, what="a command sent in eu written by us")
            await eu.send("account", "P2", "deposit", {"amount": 1})  # eu's still: in eu's stream after its orphans
        eu_journal = await eu_part.service.journal.read("account", "P1")
        assert [(e.seq, e.payload) for e in eu_journal[5:]] == [(s, b'{"amount":100}') for s in (6, 7, 8)]
        assert eu_part.region.lost == {("account", "P1"): [6, 7, 8]}  # told to the operator
        stored = [(e.seq, e.payload) for e in await us_part.service.journal.read("account", "P1")]
        assert [seq for seq, _ in stored] == list(range(1, 10))
        for part in (eu_part, us_part):

            async def orphans_arrived() -> bool:
                return await held_from_eu(part, "P1") == [1, 2, 3, 4, 5, 6, 7, 8]  # noqa: B023

            await eventually(orphans_arrived, what=f"eu's lost events in {part.name}'s replica stream")

            async def caught_up() -> bool:
                items = await part.region.events("account", "P1")  # noqa: B023
                return [(i.envelope.seq, i.envelope.payload) for i in items] == stored

            await eventually(caught_up, what=f"{part.name}'s replica read equal to the new primary's journal")
            outside = await entity_replica(part.region.nc, part.settings, part.name, "account", "P1")  # the CLI's read
            assert [(e.seq, e.payload) for e in await outside.read("account", "P1")] == stored
            view = part.region.view("totals")

            async def past_the_orphans() -> bool:
                return await view.get("account/P2") is not None  # noqa: B023 - after eu's orphans in every replica

            await eventually(past_the_orphans, what=f"{part.name}'s view past eu's lost events")

            async def in_view() -> bool:
                row = await view.get("account/P1")  # noqa: B023
                return row is not None and row.deposits == 9

            await eventually(in_view, what=f"{part.name}'s view of the new primary's seq 9")
            row = await view.get("account/P1")
            assert row is not None and (row.balance, row.deposits) == (9, 9), f"{part.name}'s view: {row}"
