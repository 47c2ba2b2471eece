"""The ShardManager on a real three-node NATS cluster: balance, join, graceful hand-off,
a member cut off, a NATS node lost — with no moment where two members own a shard."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from nats.aio.client import Client as NATS
from support.cluster import TTL, Ownership, client, close
from support.waiting import eventually

from runtime.serve.service.cluster import Cluster, ClusterConfig, ShardManager, assign, snapshot

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

SHARDS = 256


def test_rendezvous_placement_moves_only_the_joiners_share() -> None:
    two = assign(SHARDS, ["a", "b"])
    three = assign(SHARDS, ["a", "b", "c"])
    assert sorted(s for shards in three.values() for s in shards) == list(range(SHARDS))
    moved = three["c"]
    assert all(s in two["a"] or s in two["b"] for s in moved)
    assert set(three["a"]) <= set(two["a"]) and set(three["b"]) <= set(two["b"])  # nothing else moves
    assert 50 <= len(three["c"]) <= 120


class Member:
    def __init__(self, name: str, nc: NATS, manager: ShardManager, scope: anyio.CancelScope) -> None:
        self.name, self.nc, self.manager, self.scope = name, nc, manager, scope


@asynccontextmanager
async def members(nats_cluster: NatsCluster, config: ClusterConfig, ownership: Ownership) -> AsyncIterator[Any]:
    """`start(name)` runs a member in this task group until `stop(name)` (graceful) or a cut."""
    running: dict[str, Member] = {}
    async with anyio.create_task_group() as tg:

        async def run(name: str, *, task_status: anyio.abc.TaskStatus[Member]) -> None:
            nc = await client(nats_cluster, name)
            try:
                with anyio.CancelScope() as scope:
                    async with (
                        Cluster.join(nc, config, member_id=name) as cluster,
                        ShardManager(cluster, **ownership.callbacks(name)) as manager,  # type: ignore[arg-type]
                    ):
                        member = Member(name, nc, manager, scope)
                        running[name] = member
                        task_status.started(member)
                        await anyio.sleep_forever()
            finally:
                running.pop(name, None)
                await close(nc)

        class Control:
            async def start(self, name: str) -> Member:
                member: Member = await tg.start(run, name)
                return member

            async def stop(self, name: str) -> None:
                running[name].scope.cancel()
                await eventually(lambda: name not in running, 10, f"{name} stopped")

        try:
            yield Control()
        finally:
            tg.cancel_scope.cancel()


def all_owned(ownership: Ownership, names: list[str]) -> bool:
    return len(ownership.open) == SHARDS and {m for m, _ in ownership.open.values()} == set(names)


async def test_members_split_the_shards_a_joiner_takes_its_share_and_a_graceful_stop_hands_off(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    ownership = Ownership()
    async with members(nats_cluster, config, ownership) as cluster:
        a = await cluster.start("a")
        b = await cluster.start("b")
        await eventually(lambda: all_owned(ownership, ["a", "b"]), 10, "a and b own every shard")
        assert 90 <= len(ownership.held_by("a")) <= 166, len(ownership.held_by("a"))
        assert a.manager.held() == ownership.held_by("a") and b.manager.held() == ownership.held_by("b")

        # a third member joins: it takes its share within seconds, and only from the others
        joined = time.monotonic()
        await cluster.start("c")
        expected = assign(SHARDS, ["a", "b", "c"])
        await eventually(
            lambda: all(ownership.held_by(m) == set(expected[m]) for m in "abc"), 10, "the three-way split"
        )
        assert len(ownership.held_by("c")) >= 50
        print(f"join rebalance: {time.monotonic() - joined:.2f} s")

        snap = await snapshot(a.nc, config)
        assert {m.id for m in snap.members} == {"a", "b", "c"}
        assert {m: set(s) for m, s in snap.shards_per_member.items()} == {m: set(expected[m]) for m in "abc"}
        assert snap.unowned_shards == [] and snap.shard_count == SHARDS
        assert "member c" in snap.render()

        # a graceful stop hands b's shards to a and c: every lease released, none left to expire
        b_held, b_handoffs = len(ownership.held_by("b")), b.manager.handoffs
        stopped = time.monotonic()
        await cluster.stop("b")
        await eventually(lambda: all_owned(ownership, ["a", "c"]), 10, "a and c own every shard")
        print(f"graceful hand-off: {time.monotonic() - stopped:.2f} s")
        assert b.manager.handoffs - b_handoffs == b_held and b.manager.losses == 0
    assert ownership.violations == []


async def test_a_member_cut_off_loses_its_shards_before_the_others_take_them(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    ownership = Ownership()
    async with members(nats_cluster, config, ownership) as cluster:
        await cluster.start("a")
        b = await cluster.start("b")
        await cluster.start("c")
        await eventually(lambda: all_owned(ownership, ["a", "b", "c"]), 15, "three members own every shard")
        theirs = ownership.held_by("b")
        cut = time.monotonic()
        await b.nc.close()  # abruptly: no release, no leave
        with anyio.fail_after(5.0):  # every shard served again within 5 s of the cut
            await eventually(lambda: not ownership.held_by("b"), TTL * 2, "b gave up its shards")
            lost_after = time.monotonic() - cut
            await eventually(lambda: all_owned(ownership, ["a", "c"]), TTL * 4, "a and c took b's shards")
        print(f"cut: b stopped after {lost_after:.2f} s, every shard served after {time.monotonic() - cut:.2f} s")
        for shard in theirs:
            (_, _, ended), *_ = [i for i in ownership.intervals[shard] if i[0] == "b"]
            taker_start = ownership.open[shard][1]
            assert ended < taker_start
    assert ownership.violations == []


async def test_a_sigkilled_member_s_shards_serve_elsewhere_within_seconds(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    ownership = Ownership()
    async with members(nats_cluster, config, ownership) as cluster:
        await cluster.start("a")
        await cluster.start("b")
        expected = assign(SHARDS, ["a", "b", "p"])
        proc = await anyio.open_process(
            [
                sys.executable,
                "-m",
                "tests.cluster.member_proc",
                nats_cluster.urls[1],
                config.name,
                "p",
                str(TTL),
                "a",
                "b",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            with anyio.fail_after(30):
                line = (await proc.stdout.receive()).decode()
            assert line.startswith("ready"), line
            await eventually(
                lambda: all(ownership.held_by(m) == set(expected[m]) for m in "ab"), 10, "a and b hold theirs"
            )
            killed = time.monotonic()
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            await eventually(lambda: all_owned(ownership, ["a", "b"]), 5.0, "every shard served within 5 s")
            print(f"SIGKILL: every shard served again after {time.monotonic() - killed:.2f} s")
            for shard in expected["p"]:
                assert ownership.open[shard][1] > killed
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
    assert ownership.violations == []


async def _leader(nc: NATS, stream: str) -> str:
    info = await nc.jetstream().stream_info(stream)
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def test_the_managers_keep_working_when_a_nats_node_dies(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """A follower's death costs nothing; the leader's stalls KV writes for an election (4-9 s in
    nats-server, longer than these test leases): holders stop serving, and take their own
    shards back once the bucket answers again — never two owners at once."""
    ownership = Ownership()
    async with members(nats_cluster, config, ownership) as cluster:
        a = await cluster.start("a")
        await cluster.start("b")
        await eventually(lambda: all_owned(ownership, ["a", "b"]), 15, "a and b own every shard")
        split = {m: ownership.held_by(m) for m in "ab"}
        buckets = ("leases", "members")
        leaders = {await _leader(a.nc, f"KV_{config.name}_{b}") for b in buckets}
        for leader in (False, True):
            victim = next(n for n in nats_cluster.nodes if (n.name in leaders) == leader)
            if not leader and victim.name in leaders:
                continue
            losses = a.manager.losses
            killed = time.monotonic()
            await nats_cluster.stop_node(victim, kill=True)
            try:
                if not leader:
                    await anyio.sleep(TTL * 2.5)  # more than a lease's life: renewals went through the others
                    assert all_owned(ownership, ["a", "b"]) and a.manager.losses == losses
                else:

                    async def elected(gone: str = victim.name) -> bool:
                        try:
                            return gone not in [await _leader(a.nc, f"KV_{config.name}_{b}") for b in buckets]
                        except Exception:  # noqa: BLE001 - no leader during the election
                            return False

                    await eventually(elected, 20, "new leaders for the cluster's buckets")
                    await eventually(lambda: {m: ownership.held_by(m) for m in "ab"} == split, 20, "the same split")
                    print(
                        f"leader {victim.name} killed: every shard served again after {time.monotonic() - killed:.2f} s"
                    )
            finally:
                await nats_cluster.restart_node(victim)
        # and a third member still joins and takes its share
        await cluster.start("c")
        expected = assign(SHARDS, ["a", "b", "c"])
        await eventually(lambda: all(ownership.held_by(m) == set(expected[m]) for m in "abc"), 15, "three-way split")
    assert ownership.violations == []
