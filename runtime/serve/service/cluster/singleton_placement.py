"""Which member runs each singleton: rendezvous hashing over the live members, balanced, with a settle period.

A member that holds every singleton (the outbox publisher's partitions, the views, the consumers,
the timer relay and firer) is the cluster's bound: it sits at its CPU cap while the others idle.
So each singleton has a *preferred* member, computed by every member from the same inputs (the
live members and the singleton names), and only that member campaigns for its lease at once.

- Rendezvous (highest-random-weight) hashing ranks the members for each name, as shards are
  placed (placement.py). Pure HRW leaves a dozen names unevenly spread (5, 5, 3 is as likely as
  5, 4, 4), so the names are assigned in a fixed order (by their own hash), each to its
  highest-ranked member that still has room: every member gets ⌊n/m⌋ or ⌈n/m⌉ of them. A join or
  leave moves a few names, not all.
- A member counts for placement once it has been live (membership.py) for `settle` seconds by
  this member's clock, so one that joins and dies (a crash loop) moves nothing. Members already
  live when this member first looks count at once, and this member counts itself at once: its own
  view never demotes it, so a late heartbeat of its own never makes it hand its singletons away.
- No live member at all (nobody announced yet, as in a library `Cluster.join` without a shard
  manager): nobody is preferred and everybody campaigns at once, as before placement existed.

The leases (leases.py) keep deciding who runs a singleton: placement only decides who asks
first. Two members whose views differ for a moment both campaign and one wins; the holder hands
the singleton over once its own view names another member (`Singleton` in leases.py).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

Live = Callable[[], frozenset[str]]
Names = Callable[[], Iterable[str]]
Clock = Callable[[], float]


def weight(member: str, name: str) -> int:
    """The member's rank for `name`: the same on every member (the shard placement's hash, keyed by name)."""
    return int.from_bytes(hashlib.blake2b(f"{member}\0{name}".encode(), digest_size=8).digest(), "big")


def _order(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def balanced(names: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    """name -> member: each name to its highest-ranked member with room, so counts differ by at most one."""
    ranked = sorted(set(members))
    todo = sorted(set(names), key=lambda n: (_order(n), n))
    if not ranked:
        return {}
    floor, extra = divmod(len(todo), len(ranked))
    counts = dict.fromkeys(ranked, 0)
    out: dict[str, str] = {}
    for name in todo:
        choices = sorted(ranked, key=lambda m: (weight(m, name), m), reverse=True)
        for member in choices:
            if counts[member] < floor or (counts[member] == floor and extra > 0):
                if counts[member] == floor:
                    extra -= 1
                counts[member] += 1
                out[name] = member
                break
    return out


class SpreadPlacement:
    """This member's view of where the cluster's singletons should run.

    `live`: the live members (`Membership.live`); `names`: every singleton name the app runs
    (all members run the same app, so they compute the same answer)."""

    def __init__(self, member: str, live: Live, names: Names, *, settle: float, clock: Clock = time.monotonic) -> None:
        self.member = member
        self._live = live
        self._names = names
        self.settle = settle
        self.clock = clock
        self._first_seen: dict[str, float] | None = None  # member -> when this member first saw it live
        self._cache: tuple[frozenset[str], frozenset[str], dict[str, str]] | None = None

    def counted(self) -> frozenset[str]:
        """The live members that count for placement: settled ones (all live ones if none has settled)."""
        live = self._live()
        now = self.clock()
        if self._first_seen is None:
            self._first_seen = dict.fromkeys(live, float("-inf"))
        first = self._first_seen
        for gone in [m for m in first if m not in live]:
            del first[gone]
        for m in live:
            first.setdefault(m, float("-inf") if m == self.member else now)
        settled = frozenset(m for m in live if now - first[m] >= self.settle)
        return settled or live

    def preferred(self, name: str) -> str | None:
        """The member that should run `name`; None when no member is live (then anyone campaigns)."""
        members = self.counted()
        names = frozenset(self._names()) | {name}
        cache = self._cache
        if cache is None or cache[0] != members or cache[1] != names:
            cache = self._cache = (members, names, balanced(names, members))
        return cache[2].get(name)

    def current(self) -> bool:
        """Whether this member may act on its view: it is live itself (its heartbeats get through).
        A member whose own heartbeats fail hands nothing over; the leases decide meanwhile."""
        return self.member in self._live()
