"""`memoir cluster`: members, shards per member, lease ages, singletons, read from NATS."""

from __future__ import annotations

import argparse

import anyio

from ....wire.nats import redact
from ...service.cluster import ClusterConfig, snapshot
from ..base import Subparsers, subcommand
from ..outcome import Failure
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
    print(snap.to_json().decode() if args.json else snap.render())
    return 0


def add(sub: Subparsers) -> None:
    c = subcommand(
        sub,
        "cluster",
        "members, shards per member, lease ages, singletons",
        "memoir cluster --nats-url nats://n1:4222",
        "memoir cluster --json",
    )
    c.set_defaults(fn=cluster)
