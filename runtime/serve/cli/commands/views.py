"""`memoir query` and `memoir replay`: a view of the running runtime, read or rebuilt."""

from __future__ import annotations

import argparse
from typing import Any

from ..base import Subparsers, subcommand
from ..outcome import not_found
from ..output import columns_of, json_line, print_rows, table
from ..remote import request
from ..target import client_target


def _cells(row: Any, columns: list[str]) -> list[Any]:
    return [row.get(c) for c in columns] if isinstance(row, dict) else [row]


async def query(args: argparse.Namespace) -> int:
    target = client_target(args)
    prefix = target.settings.prefix
    if args.key is not None:
        row = await request(args, target, f"{prefix}.view.{args.view}.get", {"key": args.key})
        if row is None:
            raise not_found(f"view {args.view} has no row {args.key!r}")
        columns = columns_of([row])
        print(json_line(row) if args.json else table([c.upper() for c in columns], [_cells(row, columns)]))
        return 0
    rows = await request(args, target, f"{prefix}.view.{args.view}.scan", {"after": args.after, "limit": args.limit})
    columns = columns_of([row for _, row in rows])
    print_rows(
        args,
        ["key", *columns],
        [[key, *_cells(row, columns)] for key, row in rows],
        [{"key": key, "row": row} for key, row in rows],
    )
    return 0


async def replay(args: argparse.Namespace) -> int:
    target = client_target(args)
    await request(args, target, f"{target.settings.prefix}.admin.replay", {"view": args.view})
    print(json_line({"ok": True}) if args.json else f"view {args.view} is being rebuilt from the start of its streams")
    return 0


def add(sub: Subparsers) -> None:
    q = subcommand(
        sub,
        "query",
        "read a view of the running runtime: one row by KEY, or rows in key order",
        "memoir query posts_by_author ann",
        "memoir query posts_by_author --after ann --limit 10 --json",
    )
    q.add_argument("view", metavar="VIEW", help="the view's name")
    q.add_argument("key", nargs="?", metavar="KEY", help="one row's key (default: scan rows in key order)")
    q.add_argument("--after", default="", help="scan: start after this key")
    q.add_argument("--limit", type=int, default=100, help="scan: at most this many rows (default 100)")
    q.set_defaults(fn=query)
    rp = subcommand(
        sub, "replay", "rebuild a view of the running runtime from history", "memoir replay posts_by_author"
    )
    rp.add_argument("view", metavar="VIEW", help="the view's name")
    rp.set_defaults(fn=replay)
