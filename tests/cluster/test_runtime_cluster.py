"""Three `memoir run --cluster` processes on a three-node NATS cluster, under load from eight senders.

One scenario per journal (PostgreSQL, JetStream), in phases: steady load (no `conflict`, every
read after an acknowledged write shows it), SIGKILL of one runtime (every entity answers again
within 5 s; resent commands keep counts exact), SIGTERM of another (clients see no error), its
rejoin (no `conflict`), SIGKILL of a NATS node (the runtimes serve through the others). At the
end each entity's units equal its acknowledged commands and no command id is stored twice.
"""

from __future__ import annotations

import collections
import itertools
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.members import LEASE_TTL, Member, wait_cluster
from support.postgres import POSTGRES_URL
from support.waiting import eventually

from runtime import Client, CommandError, Journal, open_journal
from runtime.serve.service.cluster import ClusterConfig, LeaseConfig
from runtime.wire.nats import close_quietly, connect

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

ENTITIES = [f"I{k}" for k in range(24)]
SENDERS = 8
ATTEMPT = 5.0  # seconds a sender waits for one reply before resending (the Client's default)


@dataclass
class Load:
    """Eight senders; each command has its own id and is resent until it succeeds."""

    acked: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    errors: list[str] = field(default_factory=list)  # every failed attempt, resent or not
    conflicts: int = 0
    stale_reads: int = 0
    longest_wait: float = 0.0  # the longest a command waited from first send to its answer
    sent: int = 0

    def reset(self) -> None:
        self.errors.clear()
        self.conflicts = 0
        self.longest_wait = 0.0


async def _until_answered(
    client: Client, load: Load, entity: str, command: str, args: dict[str, Any], cid: str | None
) -> Any:
    """Send (resending with the same id) until answered; a request lost with a killed process is resent."""
    first = time.monotonic()
    with anyio.move_on_after(30):
        while True:
            try:
                reply = await client.send("inventory", entity, command, args, command_id=cid, timeout=ATTEMPT)
            except (CommandError, TimeoutError) as exc:
                load.errors.append(f"{entity} {command} {cid}: {exc}")
                if isinstance(exc, CommandError) and exc.code == "conflict":
                    load.conflicts += 1
                await anyio.sleep(0.05)  # a pause before resending, not a wait for something
                continue
            load.longest_wait = max(load.longest_wait, time.monotonic() - first)
            return reply.result
    raise AssertionError(f"{entity} {command} unanswered for 30 s: {load.errors[-1:]}")


async def _every_entity_answers(url: str, prefix: str, within: float) -> float:
    """A `get` to every entity succeeds within `within` seconds, each retried (0.5 s per try) until it
    does; returns how long that took, for the record."""
    started, silent = time.monotonic(), set(ENTITIES)
    async with Client(url, prefix=prefix) as client:

        async def one(entity: str) -> None:
            while True:
                try:
                    await client.send("inventory", entity, "get", timeout=0.5)
                    silent.discard(entity)
                    return
                except (CommandError, TimeoutError):
                    await anyio.sleep(0.02)  # a pause before resending

        with anyio.move_on_after(within):
            async with anyio.create_task_group() as tg:
                for entity in ENTITIES:
                    tg.start_soon(one, entity)
    assert not silent, f"silent {within} s after the kill: {sorted(silent)}"
    return time.monotonic() - started


async def _sender(url: str, prefix: str, n: int, load: Load, stop: anyio.Event) -> None:
    rnd = random.Random(n)
    async with Client(url, prefix=prefix) as client:
        for i in itertools.count():
            if stop.is_set():
                return
            entity = rnd.choice(ENTITIES)
            cid = f"s{n}-{i}"
            await _until_answered(client, load, entity, "receive", {"units": 1, "on": "2022-03-01"}, cid)
            load.acked[entity].add(cid)
            load.sent += 1
            if i % 5 == 0:  # read your write: the state shows at least every acknowledged command
                seen = len(load.acked[entity])
                state = await _until_answered(client, load, entity, "get", {}, None)
                if state["units"] < seen:
                    load.stale_reads += 1


async def _phase(urls: list[str], prefix: str, load: Load, seconds: float) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for n in range(SENDERS):
            tg.start_soon(_sender, urls[n % len(urls)], prefix, n, load, stop)
        await anyio.sleep(seconds)  # pacing: the load's length
        stop.set()


async def _during(urls: list[str], prefix: str, load: Load, seconds: float, action: Any, after: float = 1.0) -> None:
    """Load for `seconds`, with `action()` run `after` seconds in."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_phase, urls, prefix, load, seconds)
        await anyio.sleep(after)  # pacing: the action lands under load
        await anyio.to_thread.run_sync(action)


@pytest.mark.parametrize("journal_kind", ["postgres", "jetstream"])
async def test_three_runtimes_share_the_entity_space(
    nats_cluster: NatsCluster, tmp_path: Path, prefix: str, pg_schema: str, journal_kind: str
) -> None:
    urls = nats_cluster.urls
    pg = f"{POSTGRES_URL}?schema={pg_schema}"
    journal_url = pg if journal_kind == "postgres" else f"{urls[0]}?prefix={prefix}&replicas=3"

    members = [Member.member(i, urls[i], journal_url, pg, prefix, tmp_path) for i in range(3)]
    for m in members:
        m.start()
    try:
        await wait_cluster(urls[0], prefix, 3, members)
        load = Load()

        # 1. steady load
        await _phase(urls, prefix, load, 4)
        assert load.conflicts == 0 and not load.errors, load.errors[:5]
        assert load.stale_reads == 0

        # 2. SIGKILL one runtime under load: every entity answers again within 5 s
        load.reset()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_phase, urls, prefix, load, 8)
            await anyio.sleep(1)  # pacing: the kill lands a second into the load
            await anyio.to_thread.run_sync(members[2].signal, signal.SIGKILL)
            failover = await _every_entity_answers(urls[0], prefix, within=5.0)

        # 3. SIGTERM another: a graceful hand-off, no error at all
        await wait_cluster(urls[0], prefix, 2)
        load.reset()
        handed_off: list[int | None] = []
        await _during(urls, prefix, load, 5, lambda: handed_off.append(members[1].signal(signal.SIGTERM)))
        assert handed_off == [0], members[1].log.read_text(errors="replace")[-2000:]
        assert not load.errors, f"clients saw errors during a graceful hand-off: {load.errors[:5]}"
        handoff_wait = load.longest_wait

        # 4. it rejoins: shards move back, no conflict
        load.reset()
        await _during(urls, prefix, load, 6, members[1].start)
        await wait_cluster(urls[0], prefix, 2)
        assert load.conflicts == 0, load.errors[:5]

        # 5. SIGKILL a NATS node: the runtimes serve through the others
        load.reset()
        node = nats_cluster.nodes[2]
        async with anyio.create_task_group() as tg:
            tg.start_soon(_phase, urls[:2], prefix, load, 6)
            await anyio.sleep(1)  # pacing: the kill lands a second into the load
            await nats_cluster.stop_node(node, kill=True)
        sent_without_node = load.sent
        await nats_cluster.restart_node(node)
        assert load.conflicts == 0, load.errors[:5]
        assert sent_without_node > 0
    finally:
        stopped = {m.name: m.signal(signal.SIGTERM) for m in members if m.proc is not None}
    assert set(stopped.values()) == {0}, stopped  # reached only when the scenario passed

    # Exact counts: every acknowledged command stored once, nothing else stored.
    async with open_journal(journal_url) as journal:
        for entity in ENTITIES:
            events = await journal.read("inventory", entity)
            ids = collections.Counter(e.command_id for e in events)
            assert all(n == 1 for n in ids.values()), f"{entity}: ids stored twice"
            assert set(ids) == load.acked[entity], f"{entity}: stored ids differ from acknowledged ones"
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
        if journal_kind == "postgres":
            await _stream_equals_journal(urls[0], prefix, journal)
    print(f"{journal_kind}: failover {failover:.2f}s, longest command wait in the hand-off {handoff_wait:.2f}s")


async def _stream_equals_journal(url: str, prefix: str, journal: Journal) -> None:
    """Every journal event of the inventory items is in the outbox stream once (the singleton publisher)."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        stream = f"{prefix.upper()}_EVENTS_INVENTORY"
        expected = 0
        for entity in ENTITIES:
            expected += len(await journal.read("inventory", entity))

        async def published() -> bool:
            return bool((await js.stream_info(stream)).state.messages >= expected)

        await eventually(published, 30, "every stored event published")
        assert (await js.stream_info(stream)).state.messages == expected
    finally:
        await close_quietly(nc)


async def test_a_cluster_refuses_stores_its_members_cannot_share(
    nats_cluster: NatsCluster, tmp_path: Path, prefix: str, pg_schema: str
) -> None:
    from entities import app
    from runtime import ConfigError, MemoryJournal, Service, SqliteViewStore

    config = ClusterConfig(name=prefix, lease=LeaseConfig(ttl=LEASE_TTL))
    async with MemoryJournal() as journal:
        with pytest.raises(ConfigError, match=r"postgresql:// or nats://, not memory://"):
            async with Service(app, journal, nats_url=nats_cluster.urls[0], prefix=prefix, cluster=config):
                pass
    async with (
        open_journal(f"{POSTGRES_URL}?schema={pg_schema}") as journal,
        SqliteViewStore(tmp_path / "views.db") as views,
    ):
        with pytest.raises(ConfigError, match=r"views need a view store every member shares"):
            async with Service(
                app, journal, nats_url=nats_cluster.urls[0], prefix=prefix, view_store=views, cluster=config
            ):
                pass
