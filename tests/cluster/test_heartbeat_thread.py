"""The membership heartbeat runs on a thread with its own NATS connection (membership.py), as the
member lease's renewal does (renewer.py): a member whose event loop is stuck for longer than the
ttl still counts itself live and keeps its shards, and leaving stops the thread before the key is
deleted. The loop is blocked with `time.sleep` on purpose: it stands for a loop saturated by commands."""

from __future__ import annotations

import dataclasses
import threading
import time

import anyio
import nats.js.errors
import pytest
from support.cluster import TTL, client, close
from support.waiting import eventually

from runtime.serve.service.cluster import Cluster, ClusterConfig, ShardManager

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

BLOCKED = 1.5 * TTL  # seconds the event loop is held: longer than the member ttl and the lease ttl


def _heartbeat_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("memoir-heartbeat-")]


async def test_a_member_whose_loop_is_blocked_past_the_ttl_keeps_its_membership_and_shards(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nc = await client(nats_cluster, "a")
    try:
        async with Cluster.join(nc, config, member_id="a") as cluster, ShardManager(cluster) as manager:
            await eventually(lambda: len(manager.held()) == config.shards, 20, "a holds every shard")
            assert _heartbeat_threads() == ["memoir-heartbeat-a"]
            before = (await cluster.members_kv.get("a")).revision
            time.sleep(BLOCKED)  # the loop is stuck: no task of this member runs meanwhile
            assert "a" in cluster.membership.live()  # read at once: what the thread wrote meanwhile
            assert all(manager.owns(s) for s in range(config.shards))  # the lease's thread, likewise
            after = (await cluster.members_kv.get("a")).revision
            assert after >= before + 2, "the heartbeats went on while the loop was blocked"
            assert manager.losses == 0
    finally:
        await close(nc)
    await eventually(lambda: not _heartbeat_threads(), 10, "the heartbeat thread ended")


async def test_on_the_event_loop_a_blocked_member_drops_out_of_its_own_view(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """The same block with the heartbeat on the loop (no threads): what the thread is for."""
    on_loop = dataclasses.replace(config, renew_on_thread=False)
    nc = await client(nats_cluster, "a")
    try:
        async with Cluster.join(nc, on_loop, member_id="a") as cluster:
            await cluster.announce()
            assert _heartbeat_threads() == []
            assert "a" in cluster.membership.live()
            time.sleep(BLOCKED)
            assert "a" not in cluster.membership.live()
    finally:
        await close(nc)


async def test_leaving_stops_the_heartbeat_thread_before_the_key_is_deleted(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nc = await client(nats_cluster, "a")
    try:
        async with Cluster.join(nc, config, member_id="a") as cluster:
            await cluster.announce()
            assert _heartbeat_threads() == ["memoir-heartbeat-a"]
            await cluster.membership.leave()
            assert _heartbeat_threads() == []  # joined before the delete
            await anyio.sleep(TTL)  # on purpose: three heartbeat periods in which no late beat may land
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await cluster.members_kv.get("a")
    finally:
        await close(nc)
