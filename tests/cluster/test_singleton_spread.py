"""Singletons spread over three `memoir run --cluster` members (the feature app: seven publisher
partitions, two views, two consumers, the timer relay and firer), and move without losing or
doubling an event: a SIGKILLed holder of a publisher partition, then a joining member.

Each phase ends by comparing every type's event stream with the shared PostgreSQL journal: each
stored event once in its stream, nothing else."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import anyio
import pytest
from support.deployment import APP, KINDS, Deployment, Ownership, deployed
from support.members import Member
from support.reading import journal_events, stream_messages, stream_total
from support.waiting import eventually

from runtime import open_journal
from runtime.wire.protocol import stream_name

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

SINGLETONS = 13  # 7 publisher partitions, 2 views, 2 consumers, timers.relay, timers.fire
LOADED = "publisher.inventory"


def _spread(own: Ownership, members: int) -> bool:
    counts = collections.Counter(own.singletons.values())
    if len(own.singletons) != SINGLETONS or len(counts) != members:
        return False
    return max(counts.values()) - min(counts.values()) <= 1


async def _balanced(d: Deployment, members: int, within: float) -> Ownership:
    last: list[Ownership] = []

    async def check() -> bool:
        last[:] = [await d.ownership()]
        return _spread(last[0], members)

    await eventually(check, within, f"{SINGLETONS} singletons over {members} members, within one of each other")
    return last[0]


async def _load(d: Deployment, tag: str, count: int) -> None:
    async with anyio.create_task_group() as tg:
        for k in range(4):

            async def sender(k: int = k) -> None:
                for i in range(count):
                    await d.send("inventory", f"{tag}-{k}", "receive", {"units": 1, "on": "2022-03-01"})
                    if i % 5 == 0:
                        await d.send("profile", f"{tag}-{k}-{i}", "register", {"name": tag})

            tg.start_soon(sender)


async def _streams_equal_journal(d: Deployment) -> None:
    """Each type's stream holds exactly the journal's events of that type, each once."""
    assert d.journal_url is not None and d.client.nc is not None
    js = d.client.nc.jetstream()
    async with open_journal(d.journal_url) as journal:
        stored = await journal_events(journal)
    by_type: dict[str, list[str]] = collections.defaultdict(list)
    for e in stored:
        by_type[e.entity_type].append(e.key)
    assert {"inventory", "profile"} <= set(by_type)
    for entity_type, keys in by_type.items():
        stream = stream_name(d.prefix, entity_type)

        async def caught_up(stream: str = stream, want: int = len(keys)) -> bool:
            total = await stream_total(js, stream)
            return total is not None and total >= want

        await eventually(caught_up, 60, f"{entity_type}: every stored event published")
        ids = [m.headers["Nats-Msg-Id"] for m in await stream_messages(js, stream)]
        doubled = [k for k, n in collections.Counter(ids).items() if n > 1]
        assert doubled == [], f"{entity_type}: published twice: {doubled[:5]}"
        assert sorted(ids) == sorted(keys), f"{entity_type}: the stream differs from the journal"


async def test_singletons_spread_and_move_without_losing_or_doubling_an_event(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    async with deployed(KINDS[1], nats_cluster.urls, tmp_path) as d:
        own = await _balanced(d, 3, 60)
        await _load(d, "before", 10)
        await _streams_equal_journal(d)

        # SIGKILL the holder of the loaded type's publisher partition, under load
        holder = own.singletons[LOADED]
        victim = next(m for m in d.processes if m.proc is not None and own.pids[m.proc.pid] == holder)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_load, d, "kill", 20)
            await anyio.sleep(1)  # pacing: the kill lands under load
            assert victim.signal(signal.SIGKILL) == -signal.SIGKILL
        d.processes.remove(victim)
        own = await _balanced(d, 2, 60)
        assert own.singletons[LOADED] != holder
        await _streams_equal_journal(d)

        # a member joins under load and takes its preferred singletons by hand-over
        assert d.journal_url is not None
        joiner = Member.member(3, nats_cluster.urls[0], d.journal_url, d.journal_url, d.prefix, tmp_path, APP)
        d.processes.append(joiner)
        joiner.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_load, d, "join", 30)
            own = await _balanced(d, 3, 90)
        assert joiner.proc is not None and own.pids[joiner.proc.pid] in own.singletons.values()
        await _load(d, "after", 5)
        await _streams_equal_journal(d)
