"""The journal's most recent events, kept in memory by the process that wrote them.

Whoever tails the journal in the same process (the outbox publisher, a view catching up)
asks for what was just appended: without this, each such read is a thread hop or a round
trip, a query and a row decode per event for events this process held a moment ago.

Only committed events are kept (they are added after their write returned), keyed by
position. A read is served from here only from a position held here, and only as far as
positions follow on without a gap; anything else (another process's appends, a position
a rolled-back PostgreSQL transaction used up, an event not added yet) is the store's to
answer. So a read from here returns exactly what the store would, only sooner. Deleting
events empties it: those reads go to the store until new appends refill it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ..model.envelope import Envelope
from .base import Page


class TailCache:
    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._by_position: dict[int, Envelope] = {}
        self._order: deque[int] = deque()
        self.hits = 0  # reads served from here (for benchmarks)
        self.generation = 0  # moves on each clear: an append that began before one adds nothing

    def add(self, envelopes: Sequence[Envelope], generation: int) -> None:
        if generation != self.generation:
            return
        for env in envelopes:
            self._by_position[env.position] = env
            self._order.append(env.position)
        while len(self._order) > self.size:
            self._by_position.pop(self._order.popleft(), None)

    def read(self, from_position: int, limit: int) -> list[Envelope] | None:
        """Events from `from_position` on, as far as they follow on here; None if it is not held."""
        page = self.read_where(None, from_position, limit)
        return None if page is None else page.events

    def read_where(self, keeps: Callable[[Envelope], bool] | None, from_position: int, limit: int) -> Page | None:
        """`read`, keeping only the events `keeps` (None: all): it looked as far as positions follow on here."""
        held = self._by_position
        if from_position not in held or limit < 1:
            return None
        out: list[Envelope] = []
        position = from_position
        while len(out) < limit and (env := held.get(position)) is not None:
            if keeps is None or keeps(env):
                out.append(env)
            position += 1
        self.hits += 1
        return Page(out, position - 1)

    def clear(self) -> None:
        self.generation += 1
        self._by_position.clear()
        self._order.clear()
