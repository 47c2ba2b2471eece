"""Memoir's `Client` sends each command straight to its owner, and a stale map still answers right.

Three `memoir run --cluster` members (PostgreSQL journal, three NATS nodes), each with a metrics
endpoint. Once the client's shard map is known, a batch of commands to entities of every member
is served where it lands: the members' forward counters (`memoir_cluster_forwards`) stay put.
Then a member is SIGTERMed: its shards move while the client's map still names it; every
command is answered once (same command id, same balance) through the fallback, and the map
follows the move.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest
from support.deployment import APP
from support.members import Member, wait_cluster
from support.postgres import need_postgres
from support.waiting import eventually

from runtime import Client
from runtime.serve.process.http_token import read_http_token
from runtime.serve.service.cluster.shards import shard_of
from runtime.serve.service.embedded_nats import free_port

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

ACCOUNTS = 60
_runs = itertools.count()


@dataclass
class Members:
    prefix: str
    url: str
    processes: list[Member]
    metrics: list[str]
    gateways: list[str]

    def http(self, i: int) -> httpx.AsyncClient:
        """Member `i`'s HTTP gateway, with the bearer token its data dir holds."""
        member = self.processes[i]
        token = read_http_token(Path(member.argv[member.argv.index("--data-dir") + 1]))
        assert token is not None
        return httpx.AsyncClient(base_url=self.gateways[i], timeout=10, headers={"Authorization": f"Bearer {token}"})

    async def forwards(self) -> dict[str, float]:
        """Each running member's `memoir_cluster_forwards`, by member name."""
        out: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=5) as http:
            for m, url in zip(self.processes, self.metrics, strict=True):
                if m.proc is None:
                    continue
                text = (await http.get(url)).text
                line = next(x for x in text.splitlines() if x.startswith("memoir_cluster_forwards "))
                out[m.name] = float(line.split()[1])
        return out


@pytest.fixture(scope="module")
async def members(nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Members]:
    base = need_postgres()
    prefix = f"dr{next(_runs)}x{os.getpid() % 10000}"
    pg = f"{base}?schema={prefix}"
    tmp = tmp_path_factory.mktemp("direct")
    ports = [free_port() for _ in range(3)]
    web = [free_port() for _ in range(3)]
    procs = [Member.member(i, nats_cluster.urls[i], pg, pg, prefix, tmp, APP) for i in range(3)]
    for m, port, http_port in zip(procs, ports, web, strict=True):
        m.argv += ["--metrics-port", str(port), "--http-port", str(http_port)]
        m.start()
    stopped: dict[str, int | None] = {}
    try:
        await wait_cluster(nats_cluster.urls[0], prefix, 3, procs, timeout=90)
        metrics = [f"http://127.0.0.1:{p}/metrics" for p in ports]
        yield Members(prefix, nats_cluster.urls[-1], procs, metrics, [f"http://127.0.0.1:{p}" for p in web])
    finally:
        stopped = {m.name: m.signal(signal.SIGTERM) for m in procs if m.proc is not None}
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {prefix} CASCADE")
        finally:
            await conn.close()
    assert set(stopped.values()) <= {0}, f"exit statuses {stopped} (logs in {tmp})"


async def _map_known(client: Client, members: int) -> None:
    async def known() -> bool:
        m = client.shard_map
        return m is not None and len(m.owners) == m.shards and len({o for o, _ in m.owners.values()}) == members

    await eventually(known, 30, f"the client's shard map names every shard and {members} members")


async def test_commands_reach_their_owner_without_a_hop(members: Members) -> None:
    async with Client(members.url, prefix=members.prefix) as client:
        await _map_known(client, 3)
        assert client.shard_map is not None
        owners = {client.shard_map.owner("account", f"direct-{n}") for n in range(ACCOUNTS)}
        assert len(owners) == 3, f"the batch must reach every member, it reaches {owners}"
        before = await members.forwards()
        for n in range(ACCOUNTS):
            reply = await client.send("account", f"direct-{n}", "deposit", {"amount": n + 1}, command_id=f"d-{n}")
            assert reply.result == n + 1
        after = await members.forwards()
    hops = sum(after.values()) - sum(before.values())
    print(f"forwards during {ACCOUNTS} commands: {hops:g} ({after})")
    assert hops == 0, f"{hops:g} of {ACCOUNTS} commands were forwarded"


async def test_the_http_gateway_sends_to_the_owner_without_a_hop(members: Members) -> None:
    async with Client(members.url, prefix=members.prefix) as client:
        await _map_known(client, 3)  # the members' own maps are as far along by now
        assert client.shard_map is not None
        owners = {client.shard_map.owner("account", f"web-{n}") for n in range(ACCOUNTS)}
    assert len(owners) == 3, f"the batch must reach every member, it reaches {owners}"

    async def gateway_up() -> bool:
        async with members.http(0) as http:
            try:
                return (await http.get("/openapi.json")).status_code == 200
            except httpx.HTTPError:
                return False

    await eventually(gateway_up, 30, "member 0's HTTP gateway up")
    before = await members.forwards()
    async with members.http(0) as http:
        for n in range(ACCOUNTS):
            r = await http.post(f"/account/web-{n}/deposit", json={"amount": n + 1})
            assert (r.status_code, r.json()["result"]) == (200, n + 1), r.text
    after = await members.forwards()
    hops = sum(after.values()) - sum(before.values())
    print(f"forwards during {ACCOUNTS} HTTP commands through one gateway: {hops:g}")
    assert hops == 0, f"{hops:g} of {ACCOUNTS} commands were forwarded"


async def test_a_map_naming_the_wrong_member_still_answers_right(members: Members) -> None:
    """A map naming a live non-owner costs one forward; one naming a member gone, a resend."""
    async with Client(members.url, prefix=members.prefix) as client:
        await _map_known(client, 3)
        m = client.shard_map
        assert m is not None
        shard = shard_of("account", "wrong-1", m.shards)
        owner, epoch = m.owners[shard]
        other = next(o for o, _ in m.owners.values() if o != owner)
        m.owners[shard] = (other, epoch)  # stale: a live member that does not own it
        before = await members.forwards()
        assert (await client.send("account", "wrong-1", "deposit", {"amount": 5}, command_id="w-1")).result == 5
        after = await members.forwards()
        assert sum(after.values()) - sum(before.values()) == 1, (before, after)
        m.owners[shard] = ("gone-member", epoch)  # stale: a member that is not there at all
        assert (await client.send("account", "wrong-1", "deposit", {"amount": 5}, command_id="w-1")).result == 5
        assert (m.fallbacks, m.gone, m.owner("account", "wrong-1")) == (1, {"gone-member"}, None)
        assert (await client.send("account", "wrong-1", "deposit", {"amount": 5}, command_id="w-2")).result == 10


async def test_a_stale_map_answers_right_and_follows_the_move(members: Members) -> None:
    async with Client(members.url, prefix=members.prefix) as client:
        await _map_known(client, 3)
        m = client.shard_map
        assert m is not None
        leaving = members.processes[2]
        assert leaving.proc is not None
        owned = {o for o, _ in m.owners.values()}
        accounts = [f"stale-{n}" for n in range(ACCOUNTS)]
        for n, a in enumerate(accounts):
            assert (await client.send("account", a, "deposit", {"amount": 10}, command_id=f"s-{n}")).result == 10
        by_owner = {a: m.owner("account", a) for a in accounts}
        assert set(by_owner.values()) == owned
        exit_status: list[int | None] = []

        async def leave() -> None:  # in a thread: `signal` waits for the exit
            exit_status.append(await anyio.to_thread.run_sync(leaving.signal, signal.SIGTERM))

        async with anyio.create_task_group() as tg:
            tg.start_soon(leave)  # while the commands keep going to its shards

            async def resend_all() -> None:
                for n, a in enumerate(accounts):  # the same command ids: answered, never applied twice
                    reply = await client.send("account", a, "deposit", {"amount": 10}, command_id=f"s-{n}", timeout=10)
                    assert reply.result == 10

            for _ in range(5):
                await resend_all()
        assert exit_status == [0], f"the leaving member exited with {exit_status}"

        async def moved_on() -> bool:
            return len({o for o, _ in m.owners.values()}) == 2 and len(m.owners) == m.shards

        await eventually(moved_on, 30, "the client's map names the two members left for every shard")
        for n, a in enumerate(accounts):
            reply = await client.send("account", a, "deposit", {"amount": 10}, command_id=f"s2-{n}")
            assert reply.result == 20
        print(f"map updates seen: {m.updates}; resent to the shared subject: {m.fallbacks}")
