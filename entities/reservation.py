"""A reservation that a timer releases when it is not paid in time.

`hold` records the hold and, in the same write, sets a timer that sends `expire` to
this reservation when the hold runs out; `pay` cancels the timer. The stock itself is
the seed's inventory item: the `ReservationStock` consumer takes the units off the item
when a hold is recorded and tells the reservation what happened: `took` (the units left
the stock) or `refuse` (the item said no: the reservation is `refused` and its timer
cancelled). A release gives back only what was taken, so a reservation never creates
stock. Each command carries the event's id as its command id, so each lands once.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Annotated

import msgspec

from runtime import CommandError, Consumer, Context, Effect, ErrorCode, EventSourcedEntity, Nobody, applies, command, on

Positive = Annotated[int, msgspec.Meta(gt=0, le=10**9, description="units, more than 0")]  # the decoder checks it


class Held(msgspec.Struct, frozen=True):
    sku: str
    units: int
    until: int  # unix ns: when the timer releases it unless paid


class Taken(msgspec.Struct, frozen=True):
    """The units left the item's stock for this hold."""

    units: int


class Refused(msgspec.Struct, frozen=True):
    """The item refused the hold (not enough stock): nothing was taken."""

    reason: str


class Paid(msgspec.Struct, frozen=True):
    pass


class Released(msgspec.Struct, frozen=True):
    """The hold ran out; `units` (what was taken, maybe 0) go back to the stock."""

    sku: str
    units: int


class Returned(msgspec.Struct, frozen=True):
    """Units taken after the hold had already been released: they go back too."""

    sku: str
    units: int


class Hold(msgspec.Struct, frozen=True):
    sku: str = ""
    units: int = 0
    until: int = 0
    status: str = "new"  # new, held, paid, released, refused
    taken: int = 0  # units the stock gave this hold (0 until the consumer reports it)


class Reservation(EventSourcedEntity[Hold], name="reservation"):
    initial = Hold()

    @command
    def hold(self, r: Hold, sku: str, units: Positive, hold_for: float = 900.0) -> Effect[str]:
        """Hold `units` of `sku` for `hold_for` seconds (up to a year); unpaid, they go back."""
        if r.status != "new":
            return self.error(f"reservation {self.entity_id} is already {r.status}")
        sane = math.isfinite(hold_for) and abs(hold_for) < 1e10  # anything else `schedule` refuses below
        until = time.time_ns() + int(hold_for * 1e9) if sane else 0
        return (
            self.persist(Held(sku, units, until))
            .schedule("expire", after=hold_for, to=("reservation", self.entity_id, "expire"))
            .reply(lambda s: s.status)
        )

    @command(allow=Nobody())  # type: ignore[untyped-decorator]  # from the consumer only: `command(...)` is untyped
    def took(self, r: Hold, units: int) -> Effect[str]:
        """Sent by `ReservationStock` once the units left the stock; after a release, they go back."""
        if r.taken:
            return self.reply(r.status)
        if r.status == "released":
            return self.persist(Taken(units), Returned(r.sku, units)).reply(lambda s: s.status)
        return self.persist(Taken(units)).reply(lambda s: s.status)

    @command(allow=Nobody())  # type: ignore[untyped-decorator]  # from the consumer only
    def refuse(self, r: Hold, reason: str) -> Effect[str]:
        """Sent by `ReservationStock` when the item refused the hold: nothing to give back, ever."""
        if r.status not in ("held", "paid"):
            return self.reply(r.status)
        return self.persist(Refused(reason)).cancel_timer("expire").reply(lambda s: s.status)

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
        return self.persist(Released(r.sku, r.taken)).reply(lambda s: s.status)

    @command
    def get(self, r: Hold) -> Effect[Hold]:
        return self.reply(r)

    @applies
    def held(self, r: Hold, e: Held) -> Hold:
        return Hold(sku=e.sku, units=e.units, until=e.until, status="held")

    @applies
    def taken(self, r: Hold, e: Taken) -> Hold:
        return msgspec.structs.replace(r, taken=e.units)

    @applies
    def refused(self, r: Hold, e: Refused) -> Hold:
        return msgspec.structs.replace(r, status="refused")

    @applies
    def returned(self, r: Hold, e: Returned) -> Hold:
        return r  # still released; what it took went back

    @applies
    def paid(self, r: Hold, e: Paid) -> Hold:
        return msgspec.structs.replace(r, status="paid")

    @applies
    def released(self, r: Hold, e: Released) -> Hold:
        return msgspec.structs.replace(r, status="released")


class ReservationStock(Consumer, name="reservation_stock", sources=[Reservation]):
    """Held units leave the item's stock, and the reservation learns whether they did; released
    (or returned) ones come back. A refusal is an answer, caught here: never retried nor parked."""

    @on
    async def held(self, ctx: Context, e: Held) -> None:
        rid = ctx.envelope.entity_id
        try:
            await ctx.send("inventory", e.sku, "adjust", _adjust(-e.units, f"held by {rid}"))
        except CommandError as no:
            if no.code != ErrorCode.REJECTED:
                raise  # transient (overloaded, ...): retried; another refusal: parked for an operator
            await ctx.send("reservation", rid, "refuse", {"reason": no.message})
            return
        await ctx.send("reservation", rid, "took", {"units": e.units})

    @on
    async def released(self, ctx: Context, e: Released) -> None:
        await _give_back(ctx, e.sku, e.units, f"released by {ctx.envelope.entity_id}")

    @on
    async def returned(self, ctx: Context, e: Returned) -> None:
        await _give_back(ctx, e.sku, e.units, f"returned by {ctx.envelope.entity_id}")


async def _give_back(ctx: Context, sku: str, units: int, reason: str) -> None:
    if units:  # nothing was taken: nothing comes back
        await ctx.send("inventory", sku, "adjust", _adjust(units, reason))


def _adjust(units: int, reason: str) -> dict[str, object]:
    return {"units": units, "on": dt.date.today().isoformat(), "reason": reason}
