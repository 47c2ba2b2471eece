"""The ShardManager on a real three-node NATS cluster: balance, join, graceful hand-off,
a member cut off, a NATS node lost, a paused member — with no moment where two members own a
shard: each acquisition is checked against every other member's fence (`owns`) at that moment."""

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
from anyio.streams.buffered import BufferedByteReceiveStream
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
async def members(
    nats_cluster: NatsCluster, config: ClusterConfig, ownership: Ownership, **options: Any
) -> AsyncIterator[Any]:
    """`start(name)` runs a member in this task group until `stop(name)` (graceful) or a cut.

    Every acquisition asks the other running members' fences: one that still admits the shard
    is a second owner, recorded in `ownership.violations`."""
    running: dict[str, Member] = {}
    async with anyio.create_task_group() as tg:

        async def run(name: str, *, task_status: anyio.abc.TaskStatus[Member]) -> None:
            nc = await client(nats_cluster, name)
            callbacks = ownership.callbacks(name)
            logged = callbacks["on_acquired"]

            async def on_acquired(shard: int) -> None:
                others = [m for m, member in running.items() if m != name and member.manager.owns(shard)]
                if others:
                    ownership.violations.append(f"shard {shard}: {name} acquired while {others} admit it")
                await logged(shard)  # type: ignore[operator]

            callbacks["on_acquired"] = on_acquired
            try:
                with anyio.CancelScope() as scope:
                    async with (
                        Cluster.join(nc, config, member_id=name) as cluster,
                        ShardManager(cluster, **callbacks, **options) as manager,  # type: ignore[arg-type]
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
        assert all(ownership.open[shard][0] != "b" for shard in theirs)
    assert ownership.violations == []  # b's fence refused each shard before its taker acquired it


async def test_a_sigkilled_member_s_shards_serve_elsewhere_within_seconds(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    ownership = Ownership()
    async with members(nats_cluster, config, ownership) as cluster:
        a = await cluster.start("a")
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
            # and `memoir cluster` stops listing it within about two ttls (its key is reaped)
            await eventually(
                lambda: _listed(a.nc, config, {"a", "b"}), TTL * 3, "the killed member gone from the snapshot"
            )
            print(f"SIGKILL: gone from the snapshot after {time.monotonic() - killed:.2f} s")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
    assert ownership.violations == []


async def _listed(nc: NATS, config: ClusterConfig, names: set[str]) -> bool:
    snap = await snapshot(nc, config)
    return {m.id for m in snap.members} == names and set(snap.shards_per_member) == names


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

                    await eventually(elected, 60, "new leaders for the cluster's buckets")
                    await eventually(lambda: {m: ownership.held_by(m) for m in "ab"} == split, 60, "the same split")
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


async def test_the_fence_refuses_as_soon_as_the_member_lease_deadline_passes(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """The fence reads the deadline on the (injected) monotonic clock itself: a jump past it is
    refused at once, before any task of the member has run and noticed anything."""
    skew = [0.0]
    ownership = Ownership()
    async with members(nats_cluster, config, ownership, clock=lambda: time.monotonic() + skew[0]) as cluster:
        a = await cluster.start("a")
        await eventually(lambda: all_owned(ownership, ["a"]), 10, "a owns every shard")
        assert all(a.manager.owns(s) for s in range(SHARDS))
        skew[0] = TTL  # as after a pause of a ttl: no await between here and the checks
        assert not any(a.manager.owns(s) for s in range(SHARDS))
        assert a.manager.held() == frozenset(range(SHARDS))  # nothing noticed yet: the fence alone refuses
        skew[0] = 0.0
        assert all(a.manager.owns(s) for s in range(SHARDS))
    assert ownership.violations == []


async def _kv_writes(nc: NATS, config: ClusterConfig) -> int:
    js = nc.jetstream()
    return sum([(await js.stream_info(f"KV_{config.name}_{b}")).state.last_seq for b in ("leases", "members")])


async def _idle_writes_per_member_per_ttl(nats_cluster: NatsCluster, config: ClusterConfig, shards: int) -> float:
    sized = ClusterConfig(name=f"{config.name}s{shards}", shards=shards, replicas=3, lease=config.lease)
    ownership = Ownership()
    async with members(nats_cluster, sized, ownership) as cluster:
        a = await cluster.start("a")
        await cluster.start("b")
        await eventually(
            lambda: len(ownership.open) == shards and bool(ownership.held_by("a")) and bool(ownership.held_by("b")),
            20,
            f"a and b own the {shards} shards",
        )
        await anyio.sleep(TTL)  # on purpose: placement done, what is counted next is the idle state
        before = await _kv_writes(a.nc, sized)
        await anyio.sleep(2 * TTL)  # on purpose: the window counted
        writes = await _kv_writes(a.nc, sized) - before
    assert ownership.violations == []
    return writes / 2 / 2  # two members, two ttls


async def test_kv_writes_per_member_do_not_grow_with_the_shard_count(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """Idle, a member writes its lease and its heartbeat (3 each per ttl), at 64 as at 1,024 shards:
    counted as messages of the buckets' streams over two ttls."""
    per_ttl = {shards: await _idle_writes_per_member_per_ttl(nats_cluster, config, shards) for shards in (64, 1024)}
    print(f"KV writes per member per ttl: {per_ttl}")
    assert all(n <= 8 for n in per_ttl.values()), per_ttl
    assert abs(per_ttl[64] - per_ttl[1024]) <= 2, per_ttl


async def test_a_paused_member_refuses_turns_once_resumed_and_takes_its_share_back(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """SIGSTOP a member process for more than twice the ttl: the others fence its lease and serve its
    shards; SIGCONT: its first probe of its own fence admits none of them, and it then takes its
    share back (a new lease, allocations rewritten), with never two owners among a and b."""
    ownership = Ownership()
    async with members(nats_cluster, config, ownership) as cluster:
        await cluster.start("a")
        await cluster.start("b")
        expected = assign(SHARDS, ["a", "b", "p"])
        argv = [sys.executable, "-m", "tests.cluster.paused_member", nats_cluster.urls[2], config.name, "p", str(TTL)]
        proc = await anyio.open_process([*argv, "a", "b"], stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            lines = BufferedByteReceiveStream(proc.stdout)

            async def line() -> str:
                with anyio.fail_after(30):
                    return (await lines.receive_until(b"\n", 1000)).decode()

            assert await line() == "ready"
            theirs = {m: set(expected[m]) for m in "ab"}
            await eventually(lambda: {m: ownership.held_by(m) for m in "ab"} == theirs, 10, "a and b hold theirs")
            proc.send_signal(signal.SIGSTOP)
            paused = time.monotonic()
            await eventually(lambda: all_owned(ownership, ["a", "b"]), TTL * 3, "a and b serve p's shards")
            print(f"SIGSTOP: every shard served again after {time.monotonic() - paused:.2f} s")
            await anyio.sleep(max(0.0, paused + 2.5 * TTL - time.monotonic()))  # on purpose: the pause's length
            proc.send_signal(signal.SIGCONT)
            resumed, admitted, gap = (await line()).split()
            assert resumed == "resumed" and admitted == "0" and float(gap) > 2 * TTL
            assert await line() == "ready"  # its share again, under a new lease
            await eventually(lambda: {m: ownership.held_by(m) for m in "ab"} == theirs, 10, "a and b hold theirs")
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()
    assert ownership.violations == []
