"""The seed's inventory item: stock kept by SKU, changed only by events."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import msgspec

from runtime import Effect, EventSourcedEntity, applies, command

# Argument constraints live in the types: the decoder refuses `{"units": 0}` as `invalid` naming
# `$.units`, and `memoir schema` and /openapi.json show `exclusiveMinimum` to every client.
MAX_UNITS = 1_000_000_000  # per command: sums stay far inside the int64 that JSON encoders keep exact
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_UNITS, description="units, 0 or more")]
Positive = Annotated[int, msgspec.Meta(gt=0, le=MAX_UNITS, description="units, more than 0")]
Change = Annotated[int, msgspec.Meta(ge=-MAX_UNITS, le=MAX_UNITS, description="units found more (+) or fewer (-)")]


class Opened(msgspec.Struct, frozen=True):
    units: int
    last_in: date | None
    last_out: date | None


class Received(msgspec.Struct, frozen=True):
    units: int
    on: date


class Sold(msgspec.Struct, frozen=True):
    units: int
    on: date


class Adjusted(msgspec.Struct, frozen=True):
    units: int  # signed: a count found more (+) or fewer (-) than the books said
    on: date
    reason: str


class Stock(msgspec.Struct, frozen=True):
    units: int = 0
    last_in: date | None = None
    last_out: date | None = None
    opened: bool = False


class InventoryItem(EventSourcedEntity[Stock], name="inventory"):
    """One SKU. Commands answer with the units in stock after them."""

    initial = Stock()
    snapshot_every = 100

    @command
    def open(
        self, stock: Stock, units: Count, last_in: date | None = None, last_out: date | None = None
    ) -> Effect[int]:
        if stock.opened:
            return self.error(f"item {self.entity_id} is already open")
        return self.persist(Opened(units, last_in, last_out)).reply(lambda s: s.units)

    @command
    def receive(self, stock: Stock, units: Positive, on: date) -> Effect[int]:
        return self.persist(Received(units, on)).reply(lambda s: s.units)

    @command
    def sell(self, stock: Stock, units: Positive, on: date) -> Effect[int]:
        if units > stock.units:
            return self.error(f"cannot sell {units} units, {stock.units} in stock", details={"in_stock": stock.units})
        return self.persist(Sold(units, on)).reply(lambda s: s.units)

    @command
    def adjust(self, stock: Stock, units: Change, on: date, reason: str) -> Effect[int]:
        if units == 0:  # no JSON Schema type says "not 0" to msgspec: a refusal, not a malformed request
            return self.error("an adjustment of 0 units changes nothing")
        if stock.units + units < 0:
            return self.error(f"adjusting by {units} would leave {stock.units + units} units")
        return self.persist(Adjusted(units, on, reason)).reply(lambda s: s.units)

    @command
    def get(self, stock: Stock) -> Effect[Stock]:
        return self.reply(stock)

    @applies
    def opened(self, stock: Stock, e: Opened) -> Stock:
        return Stock(units=e.units, last_in=e.last_in, last_out=e.last_out, opened=True)

    @applies
    def received(self, stock: Stock, e: Received) -> Stock:
        return msgspec.structs.replace(stock, units=stock.units + e.units, last_in=e.on)

    @applies
    def sold(self, stock: Stock, e: Sold) -> Stock:
        return msgspec.structs.replace(stock, units=stock.units - e.units, last_out=e.on)

    @applies
    def adjusted(self, stock: Stock, e: Adjusted) -> Stock:
        return msgspec.structs.replace(stock, units=stock.units + e.units)
