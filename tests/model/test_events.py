"""Events evolve: versions and upcasters, renamed classes, and stored events that cannot be read."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgspec
import pytest
from support.journals import JournalFactory

from runtime import (
    App,
    CommandError,
    Effect,
    Envelope,
    EventDecodeError,
    EventSourcedEntity,
    Runtime,
    SqliteJournal,
    applies,
    command,
    event,
    model_of,
)

pytestmark = pytest.mark.anyio


# -- version 1 of the code ----------------------------------------------------------------


class PriceSet(msgspec.Struct, frozen=True):  # v1: a price in whole euros
    euros: int


class Price(msgspec.Struct, frozen=True):
    cents: int = 0
    currency: str = "EUR"
    changes: int = 0


class ProductV1(EventSourcedEntity[Price], name="product"):
    initial = Price()

    @command
    def set_price(self, p: Price, euros: int) -> Effect[None]:
        return self.persist(PriceSet(euros))

    @applies
    def price_set(self, p: Price, e: PriceSet) -> Price:
        return Price(e.euros * 100, "EUR", p.changes + 1)


# -- version 2: renamed class, cents and currency, an upcaster from v1 ----------------------


def v1_to_v2(old: dict) -> dict:  # type: ignore[type-arg]
    return {"cents": old["euros"] * 100, "currency": "EUR"}


@event(name="PriceSet", version=2, upcasters={1: v1_to_v2})
class PriceChanged(msgspec.Struct, frozen=True):
    cents: int
    currency: str


class ProductV2(EventSourcedEntity[Price], name="product"):
    initial = Price()

    @command
    def set_price(self, p: Price, cents: int, currency: str = "EUR") -> Effect[None]:
        return self.persist(PriceChanged(cents, currency))

    @command
    def get(self, p: Price) -> Effect[Price]:
        return self.reply(p)

    @applies
    def changed(self, p: Price, e: PriceChanged) -> Price:
        return Price(e.cents, e.currency, p.changes + 1)


async def test_events_written_by_v1_load_with_v2_code(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as j, Runtime(App("v1", entities=[ProductV1]), j) as rt:
        await rt.ask("product", "p", "set_price", {"euros": 3})
        await rt.ask("product", "p", "set_price", {"euros": 5})
    async with journal_factory.open() as j, Runtime(App("v2", entities=[ProductV2]), j) as rt:
        assert (await rt.ask("product", "p", "get")).result == Price(500, "EUR", 2)
        await rt.ask("product", "p", "set_price", {"cents": 650, "currency": "CHF"})
        assert (await rt.ask("product", "p", "get")).result == Price(650, "CHF", 3)
        stored = await j.read("product", "p")
    # The renamed class kept its stored name; old rows keep their version, new ones carry v2.
    assert [(e.name, e.version) for e in stored] == [("PriceSet", 1), ("PriceSet", 1), ("PriceSet", 2)]


def _envelope(name: str, version: int, payload: bytes) -> Envelope:
    return Envelope(
        entity_type="product",
        entity_id="p-9",
        seq=7,
        name=name,
        version=version,
        payload=payload,
        recorded_at=time.time_ns(),
    )


@pytest.mark.parametrize(
    ("name", "version", "payload", "reason"),
    [
        ("Vanished", 1, b"{}", "unknown event name 'Vanished'"),
        ("PriceSet", 2, b"{not json", "PriceSet v2"),
        ("PriceSet", 2, b'{"cents": "many", "currency": "EUR"}', "Expected `int`"),
        ("PriceSet", 1, b'{"pounds": 3}', "PriceSet v1"),  # the upcaster fails on it
        ("PriceSet", 9, b"{}", "newer than this code's v2"),
    ],
)
def test_an_undecodable_event_names_the_entity_and_seq(name: str, version: int, payload: bytes, reason: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        model_of(ProductV2).codec.decode(_envelope(name, version, payload))
    assert "product/p-9 seq 7" in str(info.value) and reason in str(info.value)


async def test_a_corrupted_row_fails_that_entity_only(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    app = App("v2", entities=[ProductV2])
    async with SqliteJournal(path) as j, Runtime(app, j) as rt:
        await rt.ask("product", "bad", "set_price", {"cents": 1})
        await rt.ask("product", "good", "set_price", {"cents": 2})
    with sqlite3.connect(path) as db:  # a row damaged outside Memoir
        db.execute(
            "UPDATE events SET payload = x'00ff' WHERE stream = (SELECT id FROM streams WHERE entity_id = 'bad')"
        )
    async with SqliteJournal(path) as j, Runtime(app, j) as rt:
        with pytest.raises(CommandError) as info:
            await rt.ask("product", "bad", "get")
        assert info.value.code == "internal"
        assert "product/bad seq 1" in info.value.message
        assert (await rt.ask("product", "good", "get")).result.cents == 2
        assert len(await j.read("product", "bad")) == 1, "nothing stored was changed"
