"""A reservation never creates stock: a hold the item refuses takes nothing and gives nothing back,
and a release returns only what its hold took (the outcome of the hold is recorded)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support.waiting import eventually

from entities.inventory import InventoryItem
from entities.reservation import Refused, Released, Reservation, ReservationStock, Returned, Taken
from runtime import App, CommandError, SqliteJournal
from runtime.model.access import ANONYMOUS
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.testing import EntityTestKit

pytestmark = pytest.mark.anyio

APP = App("shop", entities=[Reservation, InventoryItem], consumers=[ReservationStock])


async def test_a_hold_without_stock_is_refused_and_its_release_adds_nothing(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    async with (
        SqliteJournal(tmp_path / "j.db") as journal,
        Service(APP, journal, nats_url=nats_server.url, passivate_after=None) as svc,
    ):
        ask = svc.runtime.ask
        await ask("inventory", "SKU", "open", {"units": 2})
        await ask("reservation", "r-1", "hold", {"sku": "SKU", "units": 3, "hold_for": 60})  # more than there is
        await ask("reservation", "r-2", "hold", {"sku": "SKU", "units": 2, "hold_for": 0.5})  # taken, then expires

        async def status(rid: str) -> str:
            return str((await ask("reservation", rid, "get")).result.status)

        async def settled() -> bool:
            return await status("r-1") == "refused" and await status("r-2") == "released"

        await eventually(settled, what="r-1 refused, r-2 released by its timer")
        assert (await ask("reservation", "r-1", "expire")).result == "refused"  # a late release: nothing to give

        async def stock_is(n: int) -> bool:
            return (await ask("inventory", "SKU", "get")).result.units == n

        await eventually(lambda: stock_is(2), what="r-2's two units back")
        runner = svc.consumers["reservation_stock"]
        assert runner.dead_lettered == 0 and runner.retried == 0  # the refusal is an answer, not a failure
        sku = await journal.read("inventory", "SKU")
        adjusted = [msgspec.json.decode(e.payload)["units"] for e in sku if e.name == "Adjusted"]
        assert adjusted == [-2, 2]  # no phantom stock from r-1
        r1 = [e.name for e in await journal.read("reservation", "r-1")]
        assert "Refused" in r1 and "Released" not in r1
        assert (await ask("inventory", "SKU", "get")).result.units == 2
        for command, args in (("took", {"units": 3}), ("refuse", {"reason": "x"})):  # the consumer's alone
            with pytest.raises(CommandError) as outside:
                await ask("reservation", "r-1", command, args, caller=ANONYMOUS)
            assert outside.value.code == "unauthorized"


def test_a_release_gives_back_what_the_hold_took_even_when_it_comes_first() -> None:
    kit = EntityTestKit(Reservation, "r-1")
    kit.when("hold", sku="SKU", units=3, hold_for=60)
    assert kit.when("expire").events == [Released("SKU", 0)]  # the take not reported yet: nothing to return
    assert kit.when("took", units=3).events == [Taken(3), Returned("SKU", 3)]  # taken late: returned at once
    assert kit.when("took", units=3).events == []

    kit = EntityTestKit(Reservation, "r-2")
    kit.when("hold", sku="SKU", units=3, hold_for=60)
    kit.when("took", units=3)
    assert kit.when("expire").events == [Released("SKU", 3)]

    kit = EntityTestKit(Reservation, "r-3")
    kit.when("hold", sku="SKU", units=3, hold_for=60)
    refused = kit.when("refuse", reason="adjusting by -3 would leave -1 units")
    assert refused.events == [Refused("adjusting by -3 would leave -1 units")] and refused.state.status == "refused"
    assert refused.timers  # the expiry timer is cancelled
    assert kit.when("expire").events == [] and kit.when("pay").error is not None
