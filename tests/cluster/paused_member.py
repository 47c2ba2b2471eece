"""A cluster member in its own process for the pause test: it holds its share, says `ready`, then
probes its own fence every 10 ms. The first probe after a gap longer than the ttl (the process was
stopped) prints `resumed <shards the fence still admits> <gap in s>`, whichever of its tasks runs
first after the pause; it says `ready` again once it holds its share anew."""

from __future__ import annotations

import sys
import time

import anyio
import structlog

from runtime.serve.service.cluster import Cluster, ClusterConfig, LeaseConfig, ShardManager, assign
from runtime.wire.nats import connect


async def holding(shards: ShardManager, share: set[int]) -> None:
    with anyio.fail_after(30):
        while not all(shards.owns(s) for s in share):
            await anyio.sleep(0.05)  # polling its own state, bounded by the deadline above
    print("ready", flush=True)


async def main(url: str, name: str, member: str, ttl: float, peers: list[str]) -> None:
    nc = await connect(url, name=member, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    config = ClusterConfig(name=name, replicas=3, lease=LeaseConfig(ttl=ttl))
    share = set(assign(config.shards, [*peers, member])[member])
    async with Cluster.join(nc, config, member_id=member) as cluster, ShardManager(cluster) as shards:
        await holding(shards, share)
        last = time.monotonic()
        while True:  # ends when the test kills the process
            now = time.monotonic()
            if now - last > ttl:
                admitted = sum(shards.owns(s) for s in share)
                print(f"resumed {admitted} {now - last:.2f}", flush=True)
                await holding(shards, share)
            last = time.monotonic()
            await anyio.sleep(0.01)


if __name__ == "__main__":
    url, name, member, ttl, *peers = sys.argv[1:]
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
    anyio.run(main, url, name, member, float(ttl), peers)
