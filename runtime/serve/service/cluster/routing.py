"""One writer per entity in a cluster: which process owns an entity, and handing actors off.

The `ShardRouter` answers the NATS door (`Router`) from the shard allocation this process
sees, and fences the runtime (`admits`) with the shards it holds right now and its member
lease's deadline (placement.py). When a shard leaves, its actors are passivated after their
turns in flight, before the allocation names the successor; a lapsed lease needs no such
care: the fence refuses at the deadline by itself.
"""

from __future__ import annotations

import time

import anyio

from ....engine.runtime import Runtime
from .coordinator import Cluster
from .placement import ShardManager
from .shards import shard_of


class ShardRouter:
    """Routes by shard allocation: the NATS door's `Router` and the runtime's `admits` fence."""

    def __init__(self, cluster: Cluster, runtime: Runtime) -> None:
        self.cluster = cluster
        self.runtime = runtime
        self.member = cluster.member_id
        self.shards = cluster.config.shards
        self.manager: ShardManager | None = None
        self._pending: set[int] = set()
        self._sweeping = anyio.Lock()
        self.released = 0  # actors passivated because their shard moved

    def attach(self, manager: ShardManager) -> None:
        self.manager = manager

    def shard(self, entity_type: str, entity_id: str) -> int:
        return shard_of(entity_type, entity_id, self.shards)

    def admits(self, entity_type: str, entity_id: str) -> bool:
        """The fence: the allocation names us and our member lease's deadline (monotonic clock)
        has not passed, read now, whatever the lease task has or has not run yet."""
        return self.manager is not None and self.manager.owns(self.shard(entity_type, entity_id))

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        if self.manager is None:
            return None
        shard = self.shard(entity_type, entity_id)
        if self.manager.owns(shard):
            return self.member
        held_by = self.manager.owner_of(shard)
        return None if held_by == self.member else held_by  # ours by lease but not yet in hand: wait

    async def wait_owner(self, entity_type: str, entity_id: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            found = self.owner(entity_type, entity_id)
            if found is not None:
                return found
            await self.cluster.allocation.wait_changed(min(left, 0.1))
        return self.owner(entity_type, entity_id)

    async def wait_change(self, entity_type: str, entity_id: str, owner: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.owner(entity_type, entity_id) == owner:
            await self.cluster.allocation.wait_changed(min(left, 0.1))

    async def release(self, shard: int) -> None:
        """Passivate the shard's live actors (ShardManager's on_release and on_lost).

        Shards usually leave together (a join, a stop), so one pass over the live actors
        serves every shard pending at that moment.
        """
        self._pending.add(shard)
        async with self._sweeping:
            if shard not in self._pending:
                return  # an earlier pass took it
            batch, self._pending = self._pending, set()
            self.released += await self.runtime.passivate_where(lambda t, i: self.shard(t, i) in batch)
