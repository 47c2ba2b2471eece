"""The feature app deployed for a scenario test: one `memoir run`, or three `memoir run --cluster` members.

A test talks to either through the same `Deployment` (commands, view reads, forgetting, rebuilding a
view, HTTP), so a scenario written once runs against both and a feature cannot be single-process by
accident. `deployed` starts the processes, waits until they serve, and at the end stops each with
SIGTERM and asserts it exited 0. The cluster variant runs on PostgreSQL (journal and view store).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec

from runtime import Client, CommandError
from runtime.serve.process.http_token import read_http_token
from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, snapshot
from runtime.serve.service.cluster.shards import shard_of
from runtime.serve.service.embedded_nats import free_port
from runtime.streams.consumer import TRANSIENT

from .members import LEASE_TTL, Member, wait_cluster
from .postgres import need_postgres
from .waiting import eventually

APP = "tests.cluster.feature_app:app"
KINDS = ("one process", "three members")
_runs = itertools.count()


@dataclass
class Ownership:
    """Who owns what in a cluster, as its KV buckets say now."""

    shard_count: int
    shards: dict[int, str]  # shard -> member id
    singletons: dict[str, str]  # name -> member id
    pids: dict[int, str]  # process id -> member id

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        return self.shards.get(shard_of(entity_type, entity_id, self.shard_count))


@dataclass
class Deployment:
    kind: str
    prefix: str
    processes: list[Member]
    client: Client
    http_urls: list[str]
    journal_url: str | None = None  # the shared PostgreSQL journal of the cluster
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def clustered(self) -> bool:
        return len(self.processes) > 1

    async def send(
        self, entity_type: str, entity_id: str, command: str, args: Any = None, *, within: float = 60
    ) -> Any:
        """The command's result, resent with one command id while the answer is transient or late.

        A refusal (`rejected`, `forgotten`, …) is raised: it is the entity's answer.
        """
        cid = f"{self.prefix}-{next(self._ids)}"
        with anyio.fail_after(within):
            while True:
                try:
                    reply = await self.client.send(entity_type, entity_id, command, args, command_id=cid, timeout=5)
                    return reply.result
                except CommandError as exc:
                    if exc.code not in TRANSIENT:
                        raise
                except TimeoutError:
                    pass
                await anyio.sleep(0.1)  # a pause before resending, not a wait for something

    async def view_get(self, view: str, key: str) -> Any:
        payload = msgspec.json.encode({"key": key})
        return (await self.client.request(f"{self.prefix}.view.{view}.get", payload, timeout=5)).result

    async def replay(self, view: str) -> None:
        """Rebuild `view` from history (the process running it answers once it has)."""
        payload = msgspec.json.encode({"view": view})
        await self.client.request(f"{self.prefix}.admin.replay", payload, timeout=70)

    async def forget(self, entity_type: str, entity_id: str) -> Any:
        payload = msgspec.json.encode({"type": entity_type, "id": entity_id})
        return (await self.client.request(f"{self.prefix}.admin.forget", payload, timeout=35)).result

    def http(self, i: int) -> httpx.AsyncClient:
        """An HTTP client of process `i`'s gateway, with the bearer token its data dir holds."""
        token = read_http_token(_data_dir(self.processes[i]))
        assert token is not None
        return httpx.AsyncClient(base_url=self.http_urls[i], timeout=10, headers={"Authorization": f"Bearer {token}"})

    async def ownership(self) -> Ownership:
        assert self.client.nc is not None and self.clustered
        snap = await snapshot(self.client.nc, ClusterConfig(name=self.prefix, lease=LeaseConfig(ttl=LEASE_TTL)))
        shards = {s: m for m, owned in snap.shards_per_member.items() for s in owned}
        singletons = {name: lease.owner for name, lease in snap.singletons.items()}
        return Ownership(snap.shard_count, shards, singletons, {m.pid: m.id for m in snap.members})

    def member_id(self, ownership: Ownership, i: int) -> str:
        proc = self.processes[i].proc
        assert proc is not None
        return ownership.pids[proc.pid]

    def stop(self) -> dict[str, int | None]:
        """SIGTERM each process still running: name -> exit status."""
        return {m.name: m.signal(signal.SIGTERM) for m in self.processes if m.proc is not None}


def _one(url: str, prefix: str, tmp: Path, app: str = APP) -> Member:
    argv = [sys.executable, "-m", "runtime.serve.cli", "run", app, "--nats-url", url, "--prefix", prefix]
    argv += ["--data-dir", str(tmp / "m0"), "--log-format", "json"]
    return Member("m0", argv, tmp / "m0.log")


def _data_dir(member: Member) -> Path:
    return Path(member.argv[member.argv.index("--data-dir") + 1])


@contextlib.asynccontextmanager
async def deployed(
    kind: str, urls: Sequence[str], tmp: Path, *, http: bool = False, app: str = APP
) -> AsyncIterator[Deployment]:
    """The feature app (or `app`) as `kind` (one of KINDS) on the NATS cluster at `urls`; every process exits 0.

    With `http`, each process serves the HTTP API too (`Deployment.http(i)`).
    """
    prefix = f"fm{next(_runs)}x{os.getpid() % 10000}"
    pg = None
    if kind == KINDS[0]:
        processes = [_one(urls[0], prefix, tmp, app)]
    else:
        base = need_postgres()
        pg = f"{base}?schema={prefix}"
        processes = [Member.member(i, urls[i], pg, pg, prefix, tmp, app) for i in range(3)]
    ports = [free_port() for _ in processes] if http else []
    for m, port in zip(processes, ports, strict=False):
        m.argv += ["--http-port", str(port)]
    for m in processes:
        m.start()
    stopped: dict[str, int | None] = {}
    try:
        if pg is not None:
            await wait_cluster(urls[0], prefix, 3, processes, timeout=90)
        async with Client(urls[-1], prefix=prefix) as client:
            d = Deployment(kind, prefix, processes, client, [f"http://127.0.0.1:{p}" for p in ports], pg)

            async def http_up() -> bool:
                for i in range(len(ports)):
                    with contextlib.suppress(httpx.HTTPError):
                        async with d.http(i) as h:
                            if (await h.get("/openapi.json")).status_code == 200:
                                continue
                    return False
                return True

            await eventually(http_up, 90, "every process's HTTP gateway up")
            await d.send("profile", "warm-up", "get")
            yield d
            stopped = d.stop()
    finally:
        stopped |= {m.name: m.signal(signal.SIGTERM) for m in processes if m.proc is not None}
        if pg is not None:
            conn = await asyncpg.connect(need_postgres())
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {prefix} CASCADE")
            finally:
                await conn.close()
    assert set(stopped.values()) == {0}, f"exit statuses {stopped} (logs in {tmp})"
