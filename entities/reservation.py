"""A reservation that a timer releases when it is not paid in time.

`hold` records the hold and, in the same write, sets a timer that sends `expire` to
this reservation when the hold runs out; `pay` cancels the timer. The stock itself is
the seed's inventory item: the `ReservationStock` consumer takes the units off the item
when a hold is recorded and puts them back when it is released, with the event's id as
the command id, so each lands exactly once.
"""

from __future__ import annotations

import datetime as dt
import math
import time

import msgspec

from runtime import Consumer, Context, Effect, EventSourcedEntity, applies, command, on


class Held(msgspec.Struct, frozen=True):
    sku: str
    units: int
    until: int  # unix ns: when the timer releases it unless paid


class Paid(msgspec.Struct, frozen=True):
    pass


class Released(msgspec.Struct, frozen=True):
    sku: str
    units: int


class Hold(msgspec.Struct, frozen=True):
    sku: str = ""
    units: int = 0
    until: int = 0
    status: str = "new"  # new, held, paid, released


class Reservation(EventSourcedEntity[Hold], name="reservation"):
    initial = Hold()

    @command
    def hold(self, r: Hold, sku: str, units: int, hold_for: float = 900.0) -> Effect[str]:
        """Hold `units` of `sku` for `hold_for` seconds (up to a year); unpaid, they go back."""
        if r.status != "new":
            return self.error(f"reservation {self.entity_id} is already {r.status}")
        if units <= 0:
            return self.error("units must be positive", code="invalid")
        sane = math.isfinite(hold_for) and abs(hold_for) < 1e10  # anything else `schedule` refuses below
        until = time.time_ns() + int(hold_for * 1e9) if sane else 0
        return (
            self.persist(Held(sku, units, until))
            .schedule("expire", after=hold_for, to=("reservation", self.entity_id, "expire"))
            .reply(lambda s: s.status)
        )

    @command
    def pay(self, r: Hold) -> Effect[str]:
        if r.status != "held":
            return self.error(f"reservation {self.entity_id} is {r.status}, not held")
        return self.persist(Paid()).cancel_timer("expire").reply(lambda s: s.status)

    @command
    def expire(self, r: Hold) -> Effect[str]:
        """Sent by the timer. Paid or released already (a late firing): nothing to do."""
        if r.status != "held":
            return self.reply(r.status)
        return self.persist(Released(r.sku, r.units)).reply(lambda s: s.status)

    @command
    def get(self, r: Hold) -> Effect[Hold]:
        return self.reply(r)

    @applies
    def held(self, r: Hold, e: Held) -> Hold:
        return Hold(sku=e.sku, units=e.units, until=e.until, status="held")

    @applies
    def paid(self, r: Hold, e: Paid) -> Hold:
        return msgspec.structs.replace(r, status="paid")

    @applies
    def released(self, r: Hold, e: Released) -> Hold:
        return msgspec.structs.replace(r, status="released")


class ReservationStock(Consumer, name="reservation_stock", sources=[Reservation]):
    """Held units leave the item's stock; released ones come back (each exactly once)."""

    @on
    async def held(self, ctx: Context, e: Held) -> None:
        await ctx.send("inventory", e.sku, "adjust", _adjust(-e.units, f"held by {ctx.envelope.entity_id}"))

    @on
    async def released(self, ctx: Context, e: Released) -> None:
        await ctx.send("inventory", e.sku, "adjust", _adjust(e.units, f"released by {ctx.envelope.entity_id}"))


def _adjust(units: int, reason: str) -> dict[str, object]:
    return {"units": units, "on": dt.date.today().isoformat(), "reason": reason}
