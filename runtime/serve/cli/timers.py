"""`memoir timers TYPE ID`: an entity's pending timers, from its history and the schedule stream."""

from __future__ import annotations

import argparse
import sys

import msgspec

from ...journal import open_journal
from ...streams.timers import pending_timers
from ...wire.protocol import check_entity_id
from .target import client_target


async def timers(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    async with open_journal(target.settings.journal(), nats_auth=target.auth) as journal:
        nc, _ = await target.connect(args.timeout)
        try:
            # `workflow=True`: a workflow's timer rides in its own events (named as a workflow's, with
            # a `wake` field); the CLI does not load the app, and no other entity's events match.
            found = await pending_timers(
                journal, nc, prefix=target.settings.prefix, entity_type=args.type, entity_id=args.id, workflow=True
            )
        finally:
            await nc.close()
    for t in found:
        row = {
            "name": t.name,
            "due": t.due_at.isoformat(),
            "to": [t.to_type, t.to_id, t.command],
            "args": msgspec.json.decode(t.args),
            "every_s": t.every / 1e9 if t.every else None,
            "generation": t.generation,
        }
        every = f" every {t.every / 1e9:g}s" if t.every else ""
        human = f"{t.name:<16} {row['due']}{every}  {t.to_type}/{t.to_id} {t.command} {bytes(t.args).decode()}"
        print(msgspec.json.encode(row).decode() if args.json else human)
    if not found:
        print(f"{args.type}/{args.id} has no pending timers", file=sys.stderr)
    return 0
