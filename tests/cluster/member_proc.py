"""A cluster member in its own process, for the SIGKILL test: joins, holds its shards, says
`ready <count>` on stdout once it holds them, and runs until killed."""

from __future__ import annotations

import sys

import anyio
import structlog

from runtime.serve.service.cluster import Cluster, ClusterConfig, LeaseConfig, ShardManager, assign
from runtime.wire.nats import connect


async def main(url: str, name: str, member: str, ttl: float, peers: list[str]) -> None:
    nc = await connect(url, name=member, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    config = ClusterConfig(name=name, replicas=3, lease=LeaseConfig(ttl=ttl))
    share = set(assign(config.shards, [*peers, member])[member])
    async with Cluster.join(nc, config, member_id=member) as cluster, ShardManager(cluster) as shards:
        with anyio.fail_after(30):
            while shards.held() != share:
                await anyio.sleep(0.05)
        print(f"ready {len(share)}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    url, name, member, ttl, *peers = sys.argv[1:]
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says `ready`
    anyio.run(main, url, name, member, float(ttl), peers)
