"""`memoir region move TYPE ID --to R`: move an entity's primary region (service/regions/moves.py);
`memoir region events|state TYPE ID --in R`: an entity as region R's replica has it (the local,
eventually consistent read a region serves, whichever region writes the entity).

The old region stops writing it and says its last seq, the new one takes its events from its
replica up to that seq and claims it; between the two, commands for it answer `overloaded`
(retry). Needs every region (`--regions`, or MEMOIR_REGIONS) and the pinned types
(`--region-pinned`) as the regions' `memoir run` has them; the NATS URL of any region.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ....engine.history import state_at
from ....model.entity import model_of
from ....wire.nats import close_quietly
from ....wire.protocol import check_entity_id
from ...service.journal_reader import JournalReader
from ...service.regions import MoveError, RegionSettings, ReplicaJournal, move
from ...service.regions.orphans import entity_replica
from ...service.regions.settings import check_region
from ..base import Subparsers, entity_type, subcommand
from ..outcome import ANSWERED, Failure, not_found
from ..output import json_line, print_rows
from ..target import client_target
from .history import event_dict


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


async def _replica_read(args: argparse.Namespace) -> tuple[Any, ReplicaJournal, Any]:
    """The app, region `--in`'s replica (on a NATS connection the caller closes) and the connection."""
    check_entity_id(args.id)
    check_region(args.in_region)
    target = client_target(args)
    app = target.app()
    entity_type(app, args.type)
    nc, _ = await target.connect(args.timeout)
    prefix = target.settings.prefix
    settings = RegionSettings(name=args.in_region, regions=(args.in_region,), prefix=prefix)
    return app, await entity_replica(nc, settings, args.in_region, args.type, args.id), nc


async def region_events(args: argparse.Namespace) -> int:
    _, journal, nc = await _replica_read(args)
    try:
        reader = JournalReader(journal)
        found = [event_dict(env, await reader.payload(env)) for env in await journal.read(args.type, args.id)]
    finally:
        await close_quietly(nc)
    if not found:
        raise not_found(f"{args.type}/{args.id}: no events in region {args.in_region}'s replica")
    rows = [[d["seq"], d["recorded_at"], d["event"], d["payload"]] for d in found]
    print_rows(args, ["seq", "recorded", "event", "payload"], rows, found)
    return 0


async def region_state(args: argparse.Namespace) -> int:
    app, journal, nc = await _replica_read(args)
    try:
        model = model_of(entity_type(app, args.type))
        value, seq = await state_at(journal, model, args.id, seq=args.seq)
    finally:
        await close_quietly(nc)
    if seq == 0:
        raise not_found(f"{args.type}/{args.id}: no events in region {args.in_region}'s replica")
    print(json_line({"seq": seq, "state": value}))
    return 0


def add(sub: Subparsers) -> None:
    r = subcommand(
        sub,
        "region",
        "regions: move an entity's primary region; read an entity from a region's replica",
        "memoir region move account A-1 --to us --regions eu,us --region-pinned account=eu",
    )
    groups = r.add_subparsers(
        dest="region_command",
        metavar="{move,events,state}",
        prog="memoir region",
        required=True,
        help="move an entity's primary region, or read one region's replica",
    )
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
    for name, fn, what in (
        ("events", region_events, "an entity's history as region R's replica has it"),
        ("state", region_state, "an entity's state as region R's replica has it (--seq: after that event)"),
    ):
        rd = subcommand(groups, name, what, f"memoir region {name} account A-1 --in us --nats-url nats://us-1:4222")
        rd.add_argument("type", metavar="TYPE", help="entity type")
        rd.add_argument("id", metavar="ID", help="entity id")
        rd.add_argument("--in", dest="in_region", required=True, metavar="R", help="the region whose replica to read")
        if name == "state":
            rd.add_argument("--seq", type=int, help="the state right after this event")
        rd.set_defaults(fn=fn)
