"""`memoir cluster`: members, shards per member, lease ages, singletons, read from NATS.

For people: a summary line, then a table of members and one of singletons, ages as people
write them (durations.py); `--json`: the snapshot as one JSON line.
"""

from __future__ import annotations

import argparse

import anyio

from ....wire.nats import redact
from ...service.cluster import ClusterConfig, ClusterSnapshot, snapshot
from ..base import Subparsers, subcommand
from ..durations import relative, span
from ..outcome import Failure
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


def add(sub: Subparsers) -> None:
    c = subcommand(
        sub,
        "cluster",
        "members, shards per member, lease ages, singletons",
        "memoir cluster --nats-url nats://n1:4222",
        "memoir cluster --json",
    )
    c.set_defaults(fn=cluster)
