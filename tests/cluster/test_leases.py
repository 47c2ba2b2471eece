"""Shards, leases, fencing and the allocation on a real three-node NATS cluster (KV with three replicas)."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest
from nats.aio.client import Client as NATS
from support.cluster import TTL, client, close
from support.waiting import eventually

from runtime.model.errors import ConfigError, MemoirError
from runtime.serve.service.cluster import (
    AllocationTable,
    Cluster,
    ClusterConfig,
    LeaseConfig,
    Leases,
    shard_of,
    snapshot,
)
from runtime.serve.service.cluster.allocation import Slot
from runtime.serve.service.cluster.coordinator import check_recorded_shards
from runtime.serve.service.cluster.leases import member_key
from runtime.serve.service.cluster.store import bucket_name, ensure_bucket

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio


def test_the_shard_of_an_entity_is_the_same_everywhere() -> None:
    # fixed numbers: any process, Python version or machine must compute exactly these
    assert [shard_of("order", str(i)) for i in range(5)] == [32, 205, 63, 11, 98]
    assert shard_of("inventory", "sku-1") == 47
    assert shard_of("a", "bc") != shard_of("ab", "c")
    counts = Counter(shard_of("order", str(i)) for i in range(25_600))
    assert len(counts) == 256 and max(counts.values()) < 2 * 100  # spread: 100 each on average
    assert all(0 <= shard_of("t", str(i), 7) < 7 for i in range(100))


async def test_the_first_member_records_the_shard_count_and_a_different_one_is_refused(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nc = await client(nats_cluster)
    try:
        await Cluster.open(nc, config)
        await Cluster.open(nc, config)  # the same count: fine
        other = ClusterConfig(name=config.name, shards=128, replicas=3, lease=config.lease)
        with pytest.raises(ConfigError) as refused:
            await Cluster.open(nc, other)
        message = str(refused.value)
        assert "256" in message and "128" in message and "\n" not in message
    finally:
        await close(nc)


async def _leases(nats_cluster: NatsCluster, config: ClusterConfig, holder: str) -> tuple[NATS, Leases]:
    nc = await client(nats_cluster, holder)
    js = nc.jetstream(timeout=config.lease.request_timeout)
    kv = await ensure_bucket(js, bucket_name(config.name, "leases"), replicas=3)
    return nc, Leases(kv, holder, config.lease)


async def test_a_held_lease_is_refused_to_others_and_a_released_one_is_taken_at_once(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nca, a = await _leases(nats_cluster, config, "a")
    ncb, b = await _leases(nats_cluster, config, "b")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(a.watch)
            await tg.start(b.watch)
            held = await a.try_take("shard.00001")
            assert held is not None
            with anyio.CancelScope() as renewing:
                tg.start_soon(a.hold, held, _never)
                # for more than a ttl b cannot take it: a keeps renewing
                deadline = time.monotonic() + TTL * 1.5
                while time.monotonic() < deadline:
                    assert await b.try_take("shard.00001") is None
                    await anyio.sleep(0.1)  # pacing the attempts over the window under test
                renewing.cancel()
            assert a.renewals >= 2
            assert await a.release(held)
            with anyio.fail_after(TTL / 2):  # at once: no waiting out the ttl
                taken = await b.acquire("shard.00001")
            assert taken.key == "shard.00001"
            assert b.owner("shard.00001") == "b"
            tg.cancel_scope.cancel()
    finally:
        await close(nca)
        await close(ncb)


async def test_a_release_deletes_a_renewal_that_committed_after_it_was_cancelled(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nc, a = await _leases(nats_cluster, config, "a")
    try:
        held = await a.acquire("shard.00002")
        # a renewal cancelled in flight whose write still reached the server: a newer revision of ours
        await a.kv.update("shard.00002", a._value(held.acquired_at, 2), last=held.revision)
        assert await a.release(held)
        seen = await a.refresh("shard.00002")
        assert seen is not None and seen.owner is None  # deleted: free for a successor at once
    finally:
        await close(nc)


async def _never() -> None:
    raise AssertionError("lease lost")


async def test_a_holder_cut_off_stops_before_the_taker_starts(nats_cluster: NatsCluster, config: ClusterConfig) -> None:
    nca, a = await _leases(nats_cluster, config, "a")
    ncb, b = await _leases(nats_cluster, config, "b")
    times: dict[str, float] = {}
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(b.watch)
            held = await a.acquire("singleton.x")

            async def lost() -> None:
                times["lost"] = time.monotonic()

            tg.start_soon(a.hold, held, lost)
            await anyio.sleep(TTL)  # on purpose: a few renewals before the cut
            times["cut"] = time.monotonic()
            await nca.close()  # abruptly: no release
            with anyio.fail_after(TTL * 2.5):  # taken over within a few renewals' time
                await b.acquire("singleton.x")
            times["taken"] = time.monotonic()
            tg.cancel_scope.cancel()
    finally:
        await close(ncb)
    assert times["cut"] < times["lost"] < times["taken"]
    # the holder stopped at least most of the margin before the taker could start
    assert times["taken"] - times["lost"] > config.lease.safety_margin / 2


async def test_a_singleton_has_one_holder_and_fails_over(nats_cluster: NatsCluster, config: ClusterConfig) -> None:
    running: list[str] = []
    overlaps: list[str] = []
    conns = {name: await client(nats_cluster, name) for name in ("a", "b", "c")}

    async def member(name: str, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with Cluster.join(conns[name], config, member_id=name) as cluster:

            async def work() -> None:
                if running:
                    overlaps.append(f"{name} started while {running} ran")
                running.append(name)
                try:
                    await anyio.sleep_forever()
                finally:
                    running.remove(name)

            task_status.started()
            await cluster.singleton("outbox").run(work)

    try:
        async with anyio.create_task_group() as tg:
            for name in conns:
                await tg.start(member, name)
            await eventually(lambda: bool(running), TTL * 3, "one member running the singleton")
            await anyio.sleep(TTL)  # on purpose: a lease's life, during which there is still exactly one
            assert len(running) == 1
            first = running[0]
            await conns[first].close()
            # failover within a few seconds
            await eventually(lambda: bool(running) and running[0] != first, TTL * 2.5, "another member taking over")
            second = running[0]
            await anyio.sleep(TTL)  # on purpose: a lease's life, and the new holder is still the only one
            assert running == [second]
            snap = await snapshot(conns[second], config)
            assert snap.singletons["outbox"].owner == second and snap.singletons["outbox"].age_s < TTL
            tg.cancel_scope.cancel()
    finally:
        for nc in conns.values():
            await close(nc)
    assert overlaps == []


async def test_buckets_are_created_once_by_members_starting_together(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    conns = [await client(nats_cluster) for _ in range(3)]
    try:
        async with anyio.create_task_group() as tg:
            for nc in conns:
                tg.start_soon(Cluster.open, nc, config)
        js = conns[0].jetstream()
        info = await js.stream_info(f"KV_{config.name}_leases")
        assert info.config.num_replicas == 3
        await check_recorded_shards(await js.key_value(f"{config.name}_leases"), 256, 5)
    finally:
        for nc in conns:
            await close(nc)


async def test_a_snapshot_of_no_cluster_says_so(nats_cluster: NatsCluster, config: ClusterConfig) -> None:
    nc = await client(nats_cluster)
    try:
        with pytest.raises(MemoirError, match="no Memoir cluster"):
            await snapshot(nc, config)
    finally:
        await close(nc)


def test_a_lease_margin_must_leave_time_to_renew() -> None:
    with pytest.raises(ConfigError):
        LeaseConfig(ttl=2, margin=2)
    assert LeaseConfig(ttl=4).safety_margin == 1


async def test_a_silent_member_lease_is_fenced_only_after_a_ttl_and_its_holder_cannot_renew_it(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nca, a = await _leases(nats_cluster, config, "a")
    ncb, b = await _leases(nats_cluster, config, "b")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(b.watch)
            held = await a.acquire(member_key("a"))  # and never renewed: a is silent from here
            await eventually(lambda: b.owner(member_key("a")) == "a", TTL, "b seeing a's lease")
            assert not await b.fence(member_key("a"))  # heard from within the ttl: alive
            await eventually(lambda: b.fence(member_key("a")), TTL * 2, "a's lease fenced after a ttl of silence")
            assert not await a.renew(held)  # the fenced revision can never be renewed
            seen = await a.refresh(member_key("a"))
            assert seen is not None and seen.owner is None
            tg.cancel_scope.cancel()
    finally:
        await close(nca)
        await close(ncb)


async def test_a_renewal_that_lands_first_beats_the_fence(nats_cluster: NatsCluster, config: ClusterConfig) -> None:
    nca, a = await _leases(nats_cluster, config, "a")
    ncb, b = await _leases(nats_cluster, config, "b")
    try:
        held = await a.acquire(member_key("a"))
        seen = await b.refresh(member_key("a"))
        assert seen is not None and seen.owner == "a"
        seen.since -= TTL  # as if b had watched this revision for a whole ttl
        assert await a.renew(held)  # meanwhile a renewed: the revision b would delete is gone
        assert not await b.fence(member_key("a"))
        assert b.owner(member_key("a")) == "a"
    finally:
        await close(nca)
        await close(ncb)


async def test_two_members_racing_for_a_shard_one_wins_and_the_epoch_grows(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    nca, a = await _leases(nats_cluster, config, "a")
    ncb, b = await _leases(nats_cluster, config, "b")
    try:
        ta, tb = AllocationTable(a.kv, config.shards), AllocationTable(b.kv, config.shards)
        first = await ta.write(7, "a", by="a", last=None)
        assert first is not None and first.epoch == 1
        await tb.refresh(7)
        base = tb.slots[7]
        won: list[Slot | None] = []

        async def write(table: AllocationTable, member: str) -> None:
            won.append(await table.write(7, member, by=member, last=base))

        async with anyio.create_task_group() as tg:  # both sent before either is answered
            tg.start_soon(write, ta, "a")
            tg.start_soon(write, tb, "b")
        winners = [slot for slot in won if slot is not None]
        assert len(winners) == 1 and winners[0].epoch == 2
        await ta.refresh(7)
        await tb.refresh(7)
        assert ta.slots[7] == tb.slots[7] == winners[0]  # both see the winner, and only it
    finally:
        await close(nca)
        await close(ncb)
