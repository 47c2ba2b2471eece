"""`memoir cluster [status]`: members, shards per member, lease ages, singletons, read from NATS;
`memoir cluster up`: a cluster on loopback for trying one (process/local_cluster.py).

For people: a summary line, then a table of members and one of singletons, ages as people
write them (durations.py); `--json`: the snapshot as one JSON line. `memoir cluster` with no
subcommand is `status`, as it was before `up` existed.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from anyio import CancelScope

from ....wire.nats import redact
from ...process import eventloop
from ...process.appspec import load_app
from ...process.local_cluster import LocalCluster, LocalMember
from ...service.cluster import ClusterConfig, ClusterSnapshot, snapshot
from ..base import Subparsers, command, subcommand
from ..durations import relative, span
from ..outcome import ANSWERED, Failure
from ..output import table
from ..target import client_target


async def cluster(args: argparse.Namespace) -> int:
    target = client_target(args)
    nc, url = await target.connect(args.timeout)
    try:
        with anyio.fail_after(args.timeout * 3):
            snap = await snapshot(nc, ClusterConfig(name=target.settings.prefix))
    except TimeoutError:
        raise Failure("timeout", f"no cluster state readable at {redact(url)} within {args.timeout * 3:.0f}s") from None
    finally:
        await nc.close()
    print(snap.to_json().decode() if args.json else render(snap))
    return 0


def render(snap: ClusterSnapshot) -> str:
    """The summary, the members and the singletons, each table with its header row."""
    ages = [lease.age_s for lease in snap.leases if lease.key.startswith("shard.")]
    oldest = f", oldest shard lease renewed {relative(-max(ages))}" if ages else ""
    parts = [f"shards: {snap.shard_count}, unowned: {len(snap.unowned_shards)}{oldest}"]
    members = [[m.id, m.host, m.pid, m.shards, span(m.up_s), relative(-m.heartbeat_age_s)] for m in snap.members]
    parts.append(table(["MEMBER", "HOST", "PID", "SHARDS", "UP", "HEARTBEAT"], members))
    if snap.singletons:
        rows = [[name, lease.owner, relative(-lease.age_s)] for name, lease in sorted(snap.singletons.items())]
        parts.append(table(["SINGLETON", "OWNER", "RENEWED"], rows))
    return "\n\n".join(parts)


async def up(args: argparse.Namespace) -> int:
    """Start the cluster, say where it listens, and stop it all on SIGTERM or Ctrl-C."""
    if args.journal == "nats" and args.view_store is None and load_app(args.app or "entities:app").views:
        raise Failure(
            "usage",
            "the app has views, and a cluster's views need a store every member shares: give --view-store"
            " postgresql://… or --journal postgresql://…, or try an app without views (entities:sagas)",
        )
    cluster = LocalCluster(
        Path(args.data_dir),
        members=args.members,
        nats_nodes=args.nats_nodes,
        journal=args.journal,
        view_store=args.view_store,
        app=args.app,
        prefix=args.prefix,
    )
    crashed: list[LocalMember] = []
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signal, signals, tg.cancel_scope)
            async with cluster:  # left (members, then NATS) however the block ends
                print(_where(cluster), flush=True)
                crashed.append(await _first_exit(cluster))  # or a signal cancels the wait
            tg.cancel_scope.cancel()
    statuses = cluster.exit_statuses()
    failed = {name: status for name, status in statuses.items() if status != 0}
    if crashed or failed:
        who = f"{crashed[0].name} exited on its own" if crashed else "not every process exited 0"
        raise Failure("member_failed", f"{who}: {failed}; logs in {args.data_dir}", status=ANSWERED)
    print(f"stopped: every member exited 0, then every NATS node ({', '.join(statuses)})", flush=True)
    return 0


async def _cancel_on_signal(signals: AsyncIterator[int], scope: CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _first_exit(cluster: LocalCluster) -> LocalMember:
    """The first member to exit on its own (a crash, a lost store): then the rest are stopped."""
    first: list[LocalMember] = []
    async with anyio.create_task_group() as tg:

        async def watch(m: LocalMember) -> None:
            assert m.proc is not None
            await m.proc.wait()
            first.append(m)
            tg.cancel_scope.cancel()

        for m in cluster.members:
            tg.start_soon(watch, m)
    return first[0]


def _where(cluster: LocalCluster) -> str:
    lines = [f"memoir cluster up: {len(cluster.nats.nodes)} NATS nodes, {len(cluster.members)} members"]
    lines += [
        f"  nats {n.name}  {n.url}  monitor http://127.0.0.1:{n.monitor_port}  log {n.log}" for n in cluster.nats.nodes
    ]
    for m in cluster.members:
        assert m.proc is not None
        lines.append(
            f"  member {m.name}  pid {m.proc.pid}  data {m.data}  metrics {m.metrics}"
            f"  serving after {m.started_in:.1f}s  log {m.log}"
        )
    url = cluster.nats.urls[0]
    lines += [
        f'try: memoir send inventory XYZ-1 receive \'{{"units": 5, "on": "2022-03-01"}}\' --nats-url {url}',
        f"     memoir cluster status --nats-url {url}",
        "Ctrl-C (or SIGTERM) stops the members, then the NATS nodes.",
    ]
    return "\n".join(lines)


def add(sub: Subparsers) -> None:
    c = subcommand(
        sub,
        "cluster",
        "a cluster's members, shards and singletons (status, the default); up: one on loopback to try",
        "memoir cluster --nats-url nats://n1:4222",
        "memoir cluster status --json",
        "memoir cluster up --members 3",
    )
    c.set_defaults(fn=cluster)
    groups = c.add_subparsers(
        dest="cluster_command", metavar="{status,up}", prog="memoir cluster", help="status (the default) or up"
    )
    subcommand(
        groups,
        "status",
        "members, shards per member, lease ages, singletons",
        "memoir cluster status --nats-url nats://n1:4222",
        "memoir cluster status --json",
    ).set_defaults(fn=cluster)
    u = command(
        groups,
        "up",
        "start NATS nodes and cluster members on loopback, to try a cluster; Ctrl-C stops them all",
        "memoir cluster up --members 3                       # JetStream journal, data in ./.memoir-cluster",
        "memoir cluster up --journal postgresql://postgres@127.0.0.1/test?schema=try",
        "memoir cluster up shop:app --journal nats --view-store postgresql://postgres@127.0.0.1/test?schema=v",
        client=False,
    )
    u.add_argument("app", nargs="?", metavar="APP", help="the App as module:attribute (default entities:app)")
    u.add_argument("--members", type=int, default=3, help="`memoir run --cluster` processes (default 3)")
    u.add_argument("--nats-nodes", type=int, default=3, help="nats-server nodes, clustered (default 3)")
    u.add_argument(
        "--journal", default="nats", metavar="nats|URL", help="nats (JetStream, the default) or a postgresql:// URL"
    )
    u.add_argument(
        "--view-store", metavar="URL", help="a postgresql:// view store (an app with views on nats needs one)"
    )
    u.add_argument("--data-dir", default=".memoir-cluster", metavar="DIR", help="one dir per node and member below it")
    u.add_argument("--prefix", default="memoir", help="subject prefix (default memoir)")
    u.add_argument("--loop", choices=eventloop.CHOICES, help="event loop (MEMOIR_LOOP; default: uvloop if installed)")
    u.set_defaults(fn=up)
