"""`memoir region move TYPE ID --to R`: move an entity's primary region (service/regions/moves.py).

The old region stops writing it and says its last seq, the new one takes its events from its
replica up to that seq and claims it; between the two, commands for it answer `overloaded`
(retry). Needs every region (`--regions`, or MEMOIR_REGIONS) and the pinned types
(`--region-pinned`) as the regions' `memoir run` has them; the NATS URL of any region.
"""

from __future__ import annotations

import argparse
import json

from ....wire.nats import close_quietly
from ...service.regions import MoveError, move
from ..base import Subparsers, subcommand
from ..outcome import ANSWERED, Failure
from ..target import client_target


async def region_move(args: argparse.Namespace) -> int:
    args.region = args.to  # the settings of a process in the region that takes the entity
    target = client_target(args)
    settings = target.settings.region_settings()
    if settings is None:
        raise Failure("usage", "give --regions (every region, comma-separated) or MEMOIR_REGIONS")
    nc, _ = await target.connect(args.timeout)
    try:
        old, head = await move(
            nc, settings, args.type, args.id, args.to, timeout=max(args.timeout, 30.0), lost=args.lost
        )
    except MoveError as exc:
        raise Failure("move_failed", str(exc), status=ANSWERED) from None
    finally:
        await close_quietly(nc)
    moved = {"type": args.type, "id": args.id, "from": old, "to": args.to, "after_seq": head}
    if args.json:
        print(json.dumps(moved))
    elif old == args.to:
        print(f"{args.type}/{args.id}: its primary is {args.to} already")
    else:
        print(f"{args.type}/{args.id}: primary {old} -> {args.to}; {args.to} writes from seq {head + 1}")
    return 0


def add(sub: Subparsers) -> None:
    r = subcommand(
        sub,
        "region",
        "regions: move an entity's primary region (docs/guides/regions.md)",
        "memoir region move account A-1 --to us --regions eu,us --region-pinned account=eu",
    )
    groups = r.add_subparsers(dest="region_command", metavar="{move}", prog="memoir region", required=True)
    m = subcommand(
        groups,
        "move",
        "move an entity's primary region: the old one stops, replication catches up, the new one starts",
        "memoir region move account A-1 --to us --regions eu,us --region-pinned account=eu",
    )
    m.add_argument("type", help="the entity type")
    m.add_argument("id", help="the entity id")
    m.add_argument("--to", required=True, help="the region that writes it from now on")
    m.add_argument(
        "--lost",
        action="store_true",
        help="the old region is gone: promote --to without its release; what it had not replicated is lost (RPO)",
    )
    g = m.add_argument_group("regions (as the regions' `memoir run` has them)")
    g.add_argument("--regions", help="every region, comma-separated (MEMOIR_REGIONS)")
    g.add_argument("--region-pinned", help="type=region pairs, comma-separated (MEMOIR_REGION_PINNED)")
    g.add_argument("--region-home", help="the region keeping first-write claims (MEMOIR_REGION_HOME)")
    m.set_defaults(fn=region_move)
