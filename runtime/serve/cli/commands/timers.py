"""`memoir timers TYPE ID`: an entity's pending timers, from its history and the schedule stream.

The answer is about one entity, like `memoir state`: with `--json` it is one JSON object,
`{"entity_type", "entity_id", "timers": [...]}`, so "no timers" is JSON too, not an empty stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import msgspec

from ....model.timer_events import PendingTimer
from ....streams.timer_firing import pending_timers
from ....wire.protocol import check_entity_id
from ..base import Subparsers, subcommand
from ..durations import relative, span
from ..output import json_line, table
from ..reading import reading
from ..target import client_target


def _row(t: PendingTimer) -> dict[str, Any]:
    return {
        "name": t.name,
        "due": t.due_at.isoformat(),
        "to": [t.to_type, t.to_id, t.command],
        "args": msgspec.json.decode(t.args),
        "every_s": t.every / 1e9 if t.every else None,
        "generation": t.generation,
    }


def _human(t: PendingTimer, now: dt.datetime) -> list[Any]:
    when = relative((t.due_at - now).total_seconds(), past="overdue by {}")
    every = span(t.every / 1e9) if t.every else None
    return [t.name, t.due_at.isoformat(), when, every, f"{t.to_type}/{t.to_id} {t.command} {bytes(t.args).decode()}"]


async def timers(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    async with reading(target) as journal:
        nc, _ = await target.connect(args.timeout)
        try:
            # `workflow=True`: a workflow's timer rides in its own events (named as a workflow's, with
            # a `wake` field); the CLI does not load the app, and no other entity's events match.
            found = await pending_timers(
                journal, nc, prefix=target.settings.prefix, entity_type=args.type, entity_id=args.id, workflow=True
            )
        finally:
            await nc.close()
    if args.json:
        print(json_line({"entity_type": args.type, "entity_id": args.id, "timers": [_row(t) for t in found]}))
    elif found:
        now = dt.datetime.now(dt.UTC)
        print(table(["NAME", "DUE", "WHEN", "EVERY", "SENDS"], [_human(t, now) for t in found]))
    else:
        print(f"{args.type}/{args.id} has no pending timers")
    return 0


def add(sub: Subparsers) -> None:
    t = subcommand(
        sub,
        "timers",
        "an entity's pending timers: when each fires and what it sends",
        "memoir timers reservation r-1",
        "memoir timers transfer t-1 --json",
    )
    t.add_argument("type", metavar="TYPE", help="entity type, e.g. reservation")
    t.add_argument("id", metavar="ID", help="entity id, e.g. r-1")
    t.set_defaults(fn=timers)
