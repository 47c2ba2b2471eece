"""Where singletons go: balanced rendezvous placement, the settle period, and singletons spreading
over real members (leases on a three-node NATS cluster) as members join and go."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import anyio.abc
import pytest
from nats.aio.client import Client as NATS
from support.cluster import TTL, client, close
from support.waiting import eventually

from runtime.serve.service.cluster import Cluster, ClusterConfig
from runtime.serve.service.cluster.singleton_placement import SpreadPlacement, balanced

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

NAMES = [f"publisher.t{k}" for k in range(7)] + ["view.a", "view.b", "consumer.c", "consumer.d"]
NAMES += ["timers.relay", "timers.fire"]


def test_balanced_placement_spreads_within_one_and_agrees_everywhere() -> None:
    for members in (["a"], ["a", "b"], ["m-1", "m-2", "m-3"], [f"host-{k}" for k in range(5)]):
        for count in (1, 3, 13, 40):
            names = NAMES[:count] if count <= len(NAMES) else [f"n{k}" for k in range(count)]
            placed = balanced(names, members)
            assert set(placed) == set(names)
            counts = Counter(placed.values())
            loads = [counts.get(m, 0) for m in members]
            assert max(loads) - min(loads) <= 1, (members, count, loads)
            assert balanced(reversed(names), reversed(members)) == placed, "the same answer from any order"


def test_a_join_moves_a_share_not_everything() -> None:
    before = balanced(NAMES, ["a", "b", "c"])
    after = balanced(NAMES, ["a", "b", "c", "d"])
    moved = [n for n in NAMES if before[n] != after[n]]
    assert sum(1 for n in NAMES if after[n] == "d") == len(moved) - sum(1 for n in moved if after[n] != "d")
    assert len(moved) < len(NAMES) / 2, moved


def test_a_joiner_counts_only_after_settling_and_this_member_at_once() -> None:
    now = [100.0]
    live = {"a", "b"}
    placement = SpreadPlacement("a", lambda: frozenset(live), lambda: NAMES, settle=2.0, clock=lambda: now[0])
    assert placement.counted() == {"a", "b"}, "members live at the first look count at once"
    live.add("c")
    now[0] += 1.0
    assert placement.counted() == {"a", "b"}, "c is first seen now"
    assert all(placement.preferred(n) in ("a", "b") for n in NAMES)
    now[0] += 2.0  # c was first seen live 1 s ago
    assert placement.counted() == {"a", "b", "c"}
    assert {placement.preferred(n) for n in NAMES} == {"a", "b", "c"}
    live.discard("c")  # it goes, and comes back: it settles again
    assert placement.counted() == {"a", "b"}
    live.add("c")
    now[0] += 0.5
    assert placement.counted() == {"a", "b"}

    me = SpreadPlacement("c", lambda: frozenset(live), lambda: NAMES, settle=2.0, clock=lambda: now[0])
    live.discard("c")
    assert me.counted() == {"a", "b"} and not me.current(), "not live itself: not counted, hands nothing over"
    live.add("c")
    assert me.counted() == {"a", "b", "c"} and me.current(), "this member counts itself at once"


def test_nobody_live_means_nobody_preferred() -> None:
    placement = SpreadPlacement("a", frozenset, lambda: NAMES, settle=1.0)
    assert placement.preferred("view.a") is None


class Runs:
    """Which member runs each singleton now, by the work's own start and end; overlaps are recorded."""

    def __init__(self) -> None:
        self.now: dict[str, str] = {}
        self.overlaps: list[str] = []
        self.starts: Counter[str] = Counter()

    def work(self, member: str, name: str) -> object:
        async def run() -> None:
            if name in self.now:
                self.overlaps.append(f"{name}: {member} started while {self.now[name]} ran it")
            self.now[name] = member
            self.starts[name] += 1
            try:
                await anyio.sleep_forever()
            finally:
                if self.now.get(name) == member:
                    del self.now[name]

        return run

    def per_member(self) -> Counter[str]:
        return Counter(self.now.values())


async def _member(
    nc: NATS, config: ClusterConfig, member: str, runs: Runs, *, task_status: anyio.abc.TaskStatus[Cluster]
) -> None:
    async with Cluster.join(nc, config, member_id=member) as cluster:
        for name in NAMES:
            cluster.singleton(name)
        await cluster.announce()
        async with anyio.create_task_group() as tg:
            for name in NAMES:
                tg.start_soon(cluster.singleton(name).run, runs.work(member, name))
            task_status.started(cluster)


def _balanced(runs: Runs, members: list[str]) -> bool:
    if len(runs.now) != len(NAMES):
        return False
    loads = [runs.per_member().get(m, 0) for m in members]
    return max(loads) - min(loads) <= 1


async def test_singletons_spread_a_joiner_takes_its_share_and_a_dead_member_s_move(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    runs = Runs()
    conns = {m: await client(nats_cluster, m) for m in ("a", "b", "c", "d")}
    scopes = {m: anyio.CancelScope() for m in conns}

    async def member(name: str, *, task_status: anyio.abc.TaskStatus[Cluster]) -> None:
        with scopes[name]:
            await _member(conns[name], config, name, runs, task_status=task_status)

    try:
        async with anyio.create_task_group() as tg:
            clusters = {m: await tg.start(member, m) for m in ("a", "b", "c")}

            def agreed() -> bool:  # each on its preferred member, by every member's view (each settles on its own)
                return all({clusters[m].placement.preferred(n) for m in clusters} == {h} for n, h in runs.now.items())

            await eventually(
                lambda: _balanced(runs, ["a", "b", "c"]) and agreed(), TTL * 6, "13 singletons over 3 members, ±1"
            )

            def handovers() -> int:
                return sum(s.handovers for c in clusters.values() for s in c.singletons.values())

            before = handovers()
            clusters["d"] = await tg.start(member, "d")  # a joiner, after the settle period
            await eventually(lambda: _balanced(runs, ["a", "b", "c", "d"]), TTL * 8, "the joiner took its share")
            assert runs.per_member()["d"] >= 3
            assert handovers() - before >= runs.per_member()["d"], "the joiner's share came by graceful hand-overs"

            dead = "b"
            lost = {n for n, m in runs.now.items() if m == dead}
            closed = time.monotonic()
            await conns[dead].close()  # it can no longer renew: its singletons go elsewhere
            await eventually(
                lambda: len(runs.now) == len(NAMES) and dead not in runs.per_member(),
                TTL * 6,
                "the dead member's singletons running elsewhere",
            )
            print(f"singletons of a member cut off ran elsewhere after {time.monotonic() - closed:.2f} s (ttl {TTL})")
            assert all(runs.now[n] != dead for n in lost)
            await eventually(lambda: _balanced(runs, ["a", "c", "d"]), TTL * 6, "balanced again over 3")
            tg.cancel_scope.cancel()
    finally:
        for nc in conns.values():
            await close(nc)
    assert runs.overlaps == []


async def test_running_singletons_costs_no_kv_writes_beyond_the_member_lease(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """Idle, two members running 13 singletons between them write only their own lease and
    heartbeat (3 each per ttl): a singleton's key is written when it moves, never renewed.
    Counted as messages of the buckets' streams over two ttls, once the singletons have settled."""
    runs = Runs()
    conns = {m: await client(nats_cluster, m) for m in ("a", "b")}
    js = conns["a"].jetstream()

    async def kv_writes() -> int:
        return sum([(await js.stream_info(f"KV_{config.name}_{b}")).state.last_seq for b in ("leases", "members")])

    try:
        async with anyio.create_task_group() as tg:
            clusters = [await tg.start(_member, conns[m], config, m, runs) for m in conns]
            await eventually(lambda: _balanced(runs, list(conns)), TTL * 6, "13 singletons over 2 members")
            await anyio.sleep(TTL)  # on purpose: what is counted next is the idle state
            before = await kv_writes()
            await anyio.sleep(2 * TTL)  # on purpose: the window counted
            per_member_per_ttl = (await kv_writes() - before) / 2 / 2
            assert _balanced(runs, list(conns)) and all(c.lease.serving() for c in clusters)
            tg.cancel_scope.cancel()
    finally:
        for nc in conns.values():
            await close(nc)
    print(f"KV writes per member per ttl with {len(NAMES)} singletons: {per_member_per_ttl}")
    assert per_member_per_ttl <= 8, per_member_per_ttl  # one lease per singleton would add 3 x 6.5 more
    assert runs.overlaps == []


async def test_a_preferred_member_that_loses_its_singleton_key_campaigns_again(
    nats_cluster: NatsCluster, config: ClusterConfig
) -> None:
    """The singleton's key deleted from under the holder (as by hand): its work stops, and being
    preferred, it takes the singleton again rather than waiting on a hand-over that never comes."""
    runs = Runs()
    nc = await client(nats_cluster, "solo")
    try:
        async with anyio.create_task_group() as tg:
            cluster = await tg.start(_member, nc, config, "solo", runs)
            await eventually(lambda: len(runs.now) == len(NAMES), TTL * 3, "every singleton running")
            await cluster.leases_kv.delete("singleton.view.a")
            await eventually(lambda: runs.starts["view.a"] == 2 and "view.a" in runs.now, TTL * 4, "view.a again")
            assert runs.starts["view.b"] == 1
            tg.cancel_scope.cancel()
    finally:
        await close(nc)
    assert runs.overlaps == []
