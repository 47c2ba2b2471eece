"""A test entity that sets, cancels and receives timers."""

from __future__ import annotations

import datetime as dt

import msgspec

from runtime import Effect, EventSourcedEntity, applies, command


class Set(msgspec.Struct, frozen=True):
    name: str


class Unset(msgspec.Struct, frozen=True):
    name: str


class Ticked(msgspec.Struct, frozen=True):
    name: str


class Ticks(msgspec.Struct, frozen=True):
    ticks: tuple[str, ...] = ()


class Clock(EventSourcedEntity[Ticks], name="clock"):
    initial = Ticks()

    @command
    def set(self, t: Ticks, name: str, to: str, after: float | None = None, every: float | None = None) -> Effect[None]:
        return self.persist(Set(name)).schedule(
            name, after=after, every=every, to=("clock", to, "tick"), args={"name": name}
        )

    @command
    def set_at(self, t: Ticks, name: str, to: str, at: dt.datetime) -> Effect[None]:
        return self.persist(Set(name)).schedule(name, at=at, to=("clock", to, "tick"), args={"name": name})

    @command
    def unset(self, t: Ticks, name: str) -> Effect[None]:
        return self.persist(Unset(name)).cancel_timer(name)

    @command
    def refuse(self, t: Ticks, name: str) -> Effect[None]:
        effect = self.persist(Set(name)).schedule(name, after=1, to=("clock", "x", "tick"))
        return self.error("no") if effect else effect

    @command
    def tick(self, t: Ticks, name: str) -> Effect[int]:
        return self.persist(Ticked(name)).reply(lambda s: len(s.ticks))

    @command
    def get(self, t: Ticks) -> Effect[Ticks]:
        return self.reply(t)

    @applies
    def was_set(self, t: Ticks, e: Set) -> Ticks:
        return t

    @applies
    def was_unset(self, t: Ticks, e: Unset) -> Ticks:
        return t

    @applies
    def ticked(self, t: Ticks, e: Ticked) -> Ticks:
        return Ticks(ticks=(*t.ticks, e.name))
