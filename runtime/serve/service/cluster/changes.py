"""A change notice that many waiters share: what the leases, the allocation and the membership
fire when an owner or a member changes, and what a member's background loops sleep on.

Each table has its own; the cluster's is their parent, so one wait covers all three (a shard
manager's round, a singleton's watch) with one timer instead of a task per table. `version`
lets a waiter that was busy tell it missed a change.
"""

from __future__ import annotations

import anyio


class Changes:
    def __init__(self, parent: Changes | None = None) -> None:
        self.version = 0
        self._parent = parent
        self._event = anyio.Event()

    def fire(self) -> None:
        self.version += 1
        self._event.set()
        self._event = anyio.Event()
        if self._parent is not None:
            self._parent.fire()

    async def wait(self, timeout: float) -> None:
        """Until the next change, or `timeout`."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
