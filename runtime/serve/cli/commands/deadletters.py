"""`memoir deadletters list|show|replay|purge CONSUMER`: the events a consumer parked, acted on.

Every subcommand asks the running runtime (`{prefix}.admin.deadletters.*`, serve/service/
dead_letter_admin.py): a replay runs the consumer's handler, which only the runtime has. A
replayed event sends its commands with the ids it sent the first time, so what already happened
does not happen twice.
"""

from __future__ import annotations

import argparse
from typing import Any

from ...service.dead_letter_admin import REPLAY_SECONDS
from ..base import Subparsers, subcommand
from ..outcome import Failure
from ..output import json_line, print_rows, table
from ..remote import request
from ..target import client_target


async def _ask(args: argparse.Namespace, op: str, body: dict[str, Any]) -> Any:
    target = client_target(args)
    subject = f"{target.settings.prefix}.admin.deadletters.{op}"
    return await request(args, target, subject, body, at_least=REPLAY_SECONDS if op == "replay" else 0.0)


async def list_parked(args: argparse.Namespace) -> int:
    parked = await _ask(args, "list", {"consumer": args.consumer, "after": args.after, "limit": args.limit})
    if not parked and not args.json:
        print(f"{args.consumer} has no parked events")
        return 0
    print_rows(
        args,
        ["seq", "event", "name", "parked_at", "error"],
        [[p["seq"], p["event"], p["name"], p["parked_at"], p["error"]] for p in parked],
        parked,
    )
    return 0


async def show(args: argparse.Namespace) -> int:
    found = await _ask(args, "show", {"consumer": args.consumer, "seq": args.seq})
    if args.json:
        print(json_line(found))
    else:
        print(table(["FIELD", "VALUE"], [[k, json_line(v) if k == "payload" else v] for k, v in found.items()]))
    return 0


async def replay(args: argparse.Namespace) -> int:
    if (args.seq is None) == (not args.all):
        raise Failure("usage", "give a SEQ to replay, or --all for every parked event of the consumer")
    outcome = await _ask(args, "replay", {"consumer": args.consumer, "seq": args.seq})
    if args.json:
        print(json_line(outcome))
    else:
        done = ", ".join(str(s) for s in outcome["replayed"]) or "none"
        print(f"replayed: {done}")
        for failed in outcome["failed"]:
            print(f"still parked: {failed['seq']}: {failed['error']}")
    return 1 if outcome["failed"] else 0


async def purge(args: argparse.Namespace) -> int:
    if (args.seq is None) == (not args.all):
        raise Failure("usage", "give a SEQ to purge, or --all for every parked event of the consumer")
    outcome = await _ask(args, "purge", {"consumer": args.consumer, "seq": args.seq})
    print(json_line(outcome) if args.json else f"purged {outcome['purged']} parked event(s) of {args.consumer}")
    return 0


def add(sub: Subparsers) -> None:
    d = subcommand(
        sub,
        "deadletters",
        "the events a consumer parked: list, show, replay or purge them",
        "memoir deadletters list count_posts",
        "memoir deadletters show count_posts 12",
        "memoir deadletters replay count_posts 12",
        "memoir deadletters replay count_posts --all",
        "memoir deadletters purge count_posts --all",
    )
    ops = d.add_subparsers(
        dest="deadletters_command",
        metavar="{list,show,replay,purge}",
        prog="memoir deadletters",
        required=True,
        help="list, show, replay or purge a consumer's parked events",
    )
    ls = subcommand(ops, "list", "a consumer's parked events, oldest first", "memoir deadletters list count_posts")
    ls.add_argument("consumer", metavar="CONSUMER", help="the consumer's name")
    ls.add_argument("--after", type=int, default=0, help="only those after this SEQ (the next page)")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.set_defaults(fn=list_parked)
    sh = subcommand(ops, "show", "one parked event in full", "memoir deadletters show count_posts 12")
    sh.add_argument("consumer", metavar="CONSUMER", help="the consumer's name")
    sh.add_argument("seq", type=int, metavar="SEQ", help="its SEQ, as listed")
    sh.set_defaults(fn=show)
    for name, fn, what in (("replay", replay, "handle again (then removed)"), ("purge", purge, "drop")):
        p = subcommand(ops, name, f"parked events to {what}", f"memoir deadletters {name} count_posts 12")
        p.add_argument("consumer", metavar="CONSUMER", help="the consumer's name")
        p.add_argument("seq", type=int, nargs="?", metavar="SEQ", help="one parked event's SEQ, as listed")
        p.add_argument("--all", action="store_true", help="every event the consumer has parked now")
        p.set_defaults(fn=fn)
