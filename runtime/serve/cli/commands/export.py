"""`memoir export`: the whole journal as JSON Lines, in position order (an archive: always JSON Lines)."""

from __future__ import annotations

import argparse
import sys

import msgspec

from ...service.journal_reader import JournalReader
from ..base import Subparsers, subcommand
from ..outcome import Failure
from ..reading import reading
from ..target import client_target
from .history import event_dict


async def export(args: argparse.Namespace) -> int:
    target = client_target(args)
    async with reading(target) as journal:  # before --out is opened: no file for a journal that is not there
        reader = JournalReader(journal, decrypt=args.decrypt)
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115, ASYNC230 - the CLI's own output
        count = 0
        try:
            position = args.from_position
            while page := await journal.read_all(position, limit=1000):
                for env in page:
                    out.write(msgspec.json.encode(event_dict(env, await reader.payload(env))).decode() + "\n")
                    count += 1
                position = page[-1].position + 1
            out.flush()
        finally:
            if args.out:
                out.close()
    print(f"exported {count} events", file=sys.stderr)
    if reader.unreadable:
        raise Failure("unreadable", f"{reader.unreadable} sealed payloads did not open; their rows say why", status=1)
    return 0


def add(sub: Subparsers) -> None:
    x = subcommand(
        sub,
        "export",
        "the whole journal as JSON Lines, in position order",
        "memoir export > journal.jsonl",
        "memoir export --from 1001 --out tail.jsonl",
        "memoir export | head -3",
    )
    x.add_argument("--from", dest="from_position", type=int, default=1, help="first journal position (default 1)")
    x.add_argument("--out", help="file to write (default stdout)")
    x.add_argument(
        "--decrypt",
        action="store_true",
        help="open encrypted payloads (default: kept sealed, so forgetting an entity reaches the archive too)",
    )
    x.set_defaults(fn=export)
