"""Regions on loopback: NATS clusters of JetStream nodes joined by gateways into one supercluster.

A region is a NATS cluster (its own nodes, routes and JetStream streams); gateways join the
regions, so a request in one region reaches a subscriber in another and a stream in one region
can source a stream in another (`service.regions`). Each node's cluster name is its region's
name: JetStream places a stream in the cluster of the client that creates it, or in the cluster
its `placement` names.

Every node of region R advertises the gateway address `gateway_via(R, i)` gives (by default its
own gateway port): a test puts a TCP proxy there (tests/support/regions.py) and cuts the regions
apart by blackholing it, while each region's own routes and clients stay whole.

Why gateways and not leaf nodes: the issue asks for gateways (one account, interest-pruned
routing across clusters, JetStream sourcing by stream name with no domain prefixes). Their cost,
written here because it shapes what a cut does: a supercluster has ONE JetStream meta group over
all nodes (6 for two regions of 3), so while the regions are cut neither side has a meta quorum.
Streams and consumers that exist keep working in each region (their Raft groups live inside one
cluster); creating or deleting a stream or consumer waits for the heal. Leaf nodes with a
JetStream domain per region would keep each region's meta group whole through a cut, at the cost
of `$JS.<domain>.API` prefixes on every cross-region source: the next step if that matters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from ..service.embedded_nats import free_port
from .local_cluster import NatsNode, NatsNodes, node_config

__all__ = ["GatewayVia", "NatsRegions"]

GatewayVia = Callable[[str, int], int]
"""(region, node index) -> the gateway port that node advertises and is reached on."""


class NatsRegions:
    """`async with NatsRegions(directory, ["eu", "us"]) as r: r.urls("eu")` — a supercluster on loopback."""

    def __init__(
        self,
        directory: Path,
        regions: list[str],
        *,
        size: int = 3,
        gateway_via: GatewayVia | None = None,
    ) -> None:
        if len(set(regions)) != len(regions) or len(regions) < 1:
            raise ValueError("regions must be distinct names, at least one")
        self.directory = directory
        self.names = list(regions)
        self.gateway_ports: dict[str, list[int]] = {r: [free_port() for _ in range(size)] for r in regions}
        self._via = gateway_via
        self.regions: dict[str, NatsNodes] = {}
        for region in regions:
            nodes = NatsNodes(directory / region, size=size, render=self._render(region))
            for node in nodes.nodes:
                node.name = f"{region}-{node.name}"  # server names are unique across the supercluster
            self.regions[region] = nodes

    def set_gateway_via(self, via: GatewayVia) -> None:
        """Where each node's gateway is reached (a proxy's port); before `start()`."""
        self._via = via

    def advertised(self, region: str, index: int) -> int:
        return self._via(region, index) if self._via is not None else self.gateway_ports[region][index]

    def urls(self, region: str) -> list[str]:
        return self.regions[region].urls

    def url(self, region: str) -> str:
        """The region's client URLs, comma-separated (what `memoir run --nats-url` takes)."""
        return ",".join(self.urls(region))

    def _render(self, region: str) -> Callable[[NatsNode, list[NatsNode]], str]:
        def render(node: NatsNode, nodes: list[NatsNode]) -> str:
            index = nodes.index(node)
            gateways = ", ".join(
                f"{{name: {r}, urls: [{', '.join(self._gateway_url(r, i) for i in range(len(nodes)))}]}}"
                for r in self.names
            )
            return node_config(node, nodes, cluster=region) + (
                f"gateway {{\n  name: {region}\n  listen: 127.0.0.1:{self.gateway_ports[region][index]}\n"
                f"  advertise: 127.0.0.1:{self.advertised(region, index)}\n"
                f"  connect_retries: 1000000\n  reject_unknown_cluster: true\n"
                f"  gateways: [{gateways}]\n}}\n"
            )

        return render

    def _gateway_url(self, region: str, index: int) -> str:
        return f'"nats://127.0.0.1:{self.advertised(region, index)}"'

    async def start(self, timeout: float = 60.0) -> None:
        """Every node of every region, then wait until each answers JetStream and replicates a stream."""
        for nodes in self.regions.values():
            for node in nodes.nodes:
                await nodes.start_node(node)
        for nodes in self.regions.values():
            await nodes.wait_ready(timeout=timeout)
        for nodes in self.regions.values():
            await nodes.wait_replicating(timeout=timeout)

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            for nodes in self.regions.values():
                await nodes.stop()

    def exit_statuses(self) -> Mapping[str, int | None]:
        return {n.name: n.exit_status for nodes in self.regions.values() for n in nodes.nodes}

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
