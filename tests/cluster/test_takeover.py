"""A takeover decided on a view of the leases that lags the allocation.

Seen once in test_the_managers_keep_working_when_a_nats_node_dies (the leader of the KV streams
killed): the leases watch could not start during the election, so each member knew only what it
wrote and read itself. b fenced a's silent lease; a then started a new lease and wrote its shards'
entries again under it; b, whose compare-and-set on an entry lost to a's, read the entry again
and, still believing a's lease gone (its own fence of the *old* one), took every shard a was
serving. Here the two members' take steps are driven one by one on managers without watches.
"""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from support.cluster import TTL, client, close
from support.waiting import eventually

from runtime.serve.service.cluster import Cluster, ClusterConfig, ShardManager
from runtime.serve.service.cluster.leases import member_key
from runtime.serve.service.cluster.member_lease import Generation

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio


async def _nothing() -> None:
    pass


async def _lease(manager: ShardManager, tg: anyio.abc.TaskGroup) -> anyio.CancelScope:
    """Start a new lease for `manager`'s member, renewed until the returned scope is cancelled."""
    held = await manager.leases.acquire(member_key(manager.member))
    manager.lease.current = lease = Generation(held, held.revision)
    renewing = anyio.CancelScope()

    async def renew() -> None:
        with renewing:
            await manager.leases.hold(held, _nothing, fenced=True)

    tg.start_soon(renew)
    await eventually(lambda: manager._lease is lease and manager.serving(), 5, f"{manager.member} serving")
    return renewing


async def test_a_shard_its_owner_wrote_under_a_lease_the_taker_has_not_seen_is_not_taken(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nca, ncb = await client(nats_cluster, "a"), await client(nats_cluster, "b")
    try:
        # Cluster.open starts no watch: each member knows only what it writes and reads itself
        a = ShardManager(await Cluster.open(nca, config, member_id="a"))
        b = ShardManager(await Cluster.open(ncb, config, member_id="b"))
        async with anyio.create_task_group() as tg:
            a_first = await _lease(a, tg)
            assert a._lease is not None
            await a._take(0, a._lease)
            assert a.owns(0)
            await _lease(b, tg)
            assert b._lease is not None
            await b.leases.refresh(member_key("a"))
            await b.table.refresh(0)
            assert b.table.owner(0) == "a"

            # a goes silent: after a ttl b fences its lease (a's deadline passed before that)
            a_first.cancel()
            await anyio.sleep(TTL)  # on purpose: a ttl of silence as b measures it
            assert await b.leases.fence(member_key("a"))
            assert not a.owns(0)

            # a starts a new lease and writes shard 0's entry again under it
            a_second = await _lease(a, tg)
            await a._take(0, a._lease)
            assert a.owns(0)

            # b tries twice: the first compare-and-set (on the entry it saw) loses to a's write and
            # b reads the entry again; the second must not take it while a's new lease lives
            await b._take(0, b._lease)
            await b._take(0, b._lease)
            assert 0 not in b.held() and a.owns(0)

            # once a's new lease is silent for a ttl, b fences it and takes the shard
            a_second.cancel()

            async def taken() -> bool:
                assert b._lease is not None
                await b._take(0, b._lease)
                return 0 in b.held()

            await eventually(taken, 4 * TTL, "b takes shard 0")
            assert b.owns(0) and not a.owns(0)
            tg.cancel_scope.cancel()
    finally:
        await close(nca)
        await close(ncb)
