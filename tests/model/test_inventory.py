"""The seed's inventory item: its stream for SKU XYZ-1 and the states the seed lists, before and
after a restart; and the testkit way of saying the same."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from entities.inventory import Adjusted, InventoryItem, Opened, Received, Sold, Stock
from runtime import App, CommandError, Runtime, SqliteJournal, history, model_of
from runtime.testing import EntityTestKit

pytestmark = pytest.mark.anyio

app = App("shop", entities=[InventoryItem])
SEED = [
    ("open", {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}),
    ("receive", {"units": 100, "on": "2022-03-01"}),
    ("sell", {"units": 20, "on": "2022-03-15"}),
    ("receive", {"units": 50, "on": "2022-03-15"}),
    ("sell", {"units": 20, "on": "2022-04-01"}),
    ("adjust", {"units": -20, "on": "2022-04-01", "reason": "count"}),
]
D = date.fromisoformat


def expected_states() -> dict[int, Stock]:
    """The seed's table: the state after March 1st (seq 2), March 15th (seq 4), April 1st (seq 6)."""
    return {
        2: Stock(200, D("2022-03-01"), D("2022-02-01"), opened=True),
        4: Stock(230, D("2022-03-15"), D("2022-03-15"), opened=True),
        6: Stock(190, D("2022-03-15"), D("2022-04-01"), opened=True),
    }


async def test_the_seed_stream_gives_the_seed_states_also_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    async with SqliteJournal(path) as journal, Runtime(app, journal) as rt:
        replies = [(await rt.ask("inventory", "XYZ-1", name, args)).result for name, args in SEED]
        assert replies == [100, 200, 180, 230, 210, 190]
        assert (await rt.ask("inventory", "XYZ-1", "get")).result == expected_states()[6]
        with pytest.raises(CommandError) as no:
            await rt.ask("inventory", "XYZ-1", "sell", {"units": 191, "on": "2022-04-02"})
        assert no.value.code == "rejected" and "190 in stock" in no.value.message
        assert await journal.head("inventory", "XYZ-1") == 6, "a rejected command stores nothing"

    async with SqliteJournal(path) as journal:  # rebuilt from the journal alone
        items = [h async for h in history(journal, model_of(InventoryItem), "XYZ-1")]
        assert [type(h.event) for h in items] == [Opened, Received, Sold, Received, Sold, Adjusted]
        states = {h.envelope.seq: h.state for h in items}
        for seq, state in expected_states().items():
            assert states[seq] == state
        async with Runtime(app, journal) as rt:  # and a fresh actor recovers the same state
            assert (await rt.ask("inventory", "XYZ-1", "get")).result == expected_states()[6]


def test_testkit_given_when_then() -> None:
    kit = EntityTestKit(InventoryItem, "XYZ-1").given(Opened(100, D("2022-01-01"), D("2022-02-01")))
    r = kit.when("sell", units=20, on=D("2022-03-15"))
    assert r.events == [Sold(20, D("2022-03-15"))]
    assert r.reply == 80 and r.state.units == 80 and r.state.last_out == D("2022-03-15")
    assert r.error is None

    too_many = kit.when("sell", units=81, on=D("2022-03-16"))
    assert too_many.events == [] and too_many.error is not None and too_many.error.code == "rejected"
    assert too_many.state.units == 80, "a rejection changes nothing"

    bad = kit.when("receive", units="lots", on=D("2022-03-16"))
    assert bad.error is not None and bad.error.code == "invalid" and "$.units" in bad.error.message

    unknown = kit.when("steal", units=1)
    assert unknown.error is not None and unknown.error.code == "unknown_command"
    assert kit.events == [Opened(100, D("2022-01-01"), D("2022-02-01")), Sold(20, D("2022-03-15"))]
