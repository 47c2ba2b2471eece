"""Helpers for the cluster tests: the lease TTL they run with, connections to the test cluster, and
an ownership log that catches two members holding one shard."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from nats.aio.client import Client as NATS

from runtime.wire.nats import close_quietly, connect

if TYPE_CHECKING:
    from cluster.natscluster import NatsCluster

TTL = 2.0  # short leases keep the failover tests quick

_spread = itertools.count()


async def client(nats_cluster: NatsCluster, name: str = "") -> NATS:
    """A connection to one node (round robin), which learns the others from the cluster's gossip
    and reconnects to them fast when its node is killed."""
    url = nats_cluster.urls[next(_spread) % len(nats_cluster.urls)]
    return await connect(url, name=name, reconnect_time_wait=0.2, max_reconnect_attempts=-1)


async def close(nc: NATS) -> None:
    """Close even while the test is being cancelled (a connection left open would reconnect
    forever once the cluster stops), and within a bounded time."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(5):
            await close_quietly(nc)
        if not nc.is_closed:
            await nc.close()


@dataclass
class Ownership:
    """Who held each shard when, by this process's monotonic clock, from the callbacks.

    `violations` lists every acquisition made while another member still held the shard."""

    open: dict[int, tuple[str, float]] = field(default_factory=dict)
    intervals: dict[int, list[tuple[str, float, float]]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def acquired(self, member: str, shard: int) -> None:
        now = time.monotonic()
        other = self.open.get(shard)
        if other is not None:
            self.violations.append(f"shard {shard}: {member} acquired while {other[0]} held it")
        self.open[shard] = (member, now)

    def ended(self, member: str, shard: int) -> None:
        holder = self.open.get(shard)
        if holder is not None and holder[0] == member:
            del self.open[shard]
            self.intervals.setdefault(shard, []).append((member, holder[1], time.monotonic()))

    def held_by(self, member: str) -> set[int]:
        return {s for s, (m, _) in self.open.items() if m == member}

    def callbacks(self, member: str) -> dict[str, object]:
        async def on_acquired(shard: int) -> None:
            self.acquired(member, shard)

        async def on_end(shard: int) -> None:
            self.ended(member, shard)

        return {"on_acquired": on_acquired, "on_lost": on_end, "on_release": on_end}
