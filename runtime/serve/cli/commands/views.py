"""`memoir query` and `memoir replay`: a view of the running runtime, read or rebuilt.

`memoir query VIEW --where 'owner = "ann" and balance > 10' --order-by 'balance desc' --limit 10` asks
the view's query door with the where-expression parsed here (`streams.query_text`), so a typo is
refused before anything is sent; `--page` takes the token the previous page printed.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from ....streams.query import CountQuery, Query
from ....streams.query_text import parse_order, parse_where
from ...service.admin import REBUILD_SECONDS
from ..base import Subparsers, subcommand
from ..outcome import Failure, not_found
from ..output import columns_of, json_line, print_rows, table
from ..remote import request
from ..target import client_target


def _cells(row: Any, columns: list[str]) -> list[Any]:
    return [row.get(c) for c in columns] if isinstance(row, dict) else [row]


async def _query(args: argparse.Namespace, subject: str) -> int:
    """A query by declared fields (--where, --order-by, --page, --count)."""
    target = client_target(args)
    where = None if args.where is None else parse_where(args.where)
    if args.count:
        body = msgspec.to_builtins(CountQuery(where=where))
        n = await request(args, target, f"{subject}.count", body)
        print(json_line({"count": n}) if args.json else n)
        return 0
    order_by = [o for spec in args.order_by for o in parse_order(spec)]
    q = Query(where=where, order_by=order_by, limit=args.limit, page=args.page)
    answer = await request(args, target, f"{subject}.query", msgspec.to_builtins(q))
    rows, token = answer["rows"], answer["next"]
    columns = columns_of([row for _, row in rows])
    print_rows(
        args,
        ["key", *columns],
        [[key, *_cells(row, columns)] for key, row in rows],
        [{"key": key, "row": row} for key, row in rows] + ([{"next": token}] if token else []),
    )
    if token and not args.json:
        print(f"next page: --page {token}")
    return 0


async def query(args: argparse.Namespace) -> int:
    target = client_target(args)
    prefix = target.settings.prefix
    if args.where is not None or args.order_by or args.page is not None or args.count:
        if args.key is not None:
            raise Failure("usage", "give a KEY or a query (--where, --order-by, --page, --count), not both")
        return await _query(args, f"{prefix}.view.{args.view}")
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
    subject = f"{target.settings.prefix}.admin.replay"
    await request(args, target, subject, {"view": args.view}, at_least=REBUILD_SECONDS)
    print(json_line({"ok": True}) if args.json else f"view {args.view} is being rebuilt from the start of its streams")
    return 0


def add(sub: Subparsers) -> None:
    q = subcommand(
        sub,
        "query",
        "read a view of the running runtime: a row by KEY, rows in key order, or a query",
        "memoir query posts_by_author ann",
        "memoir query posts_by_author --after ann --limit 10 --json",
        "memoir query accounts --where 'owner = \"ann\" and balance >= 10' --order-by 'balance desc' --limit 10",
        'memoir query accounts --where \'region in ("eu", "us") or name prefix "al"\' --count',
    )
    q.add_argument("view", metavar="VIEW", help="the view's name")
    q.add_argument("key", nargs="?", metavar="KEY", help="one row's key (default: scan rows in key order)")
    q.add_argument("--after", default="", help="scan: start after this key")
    q.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    q.add_argument(
        "--where",
        metavar="EXPR",
        help='rows passing EXPR: field = != < <= > >= value, field in (v, ...), field prefix "text",'
        ' field is [not] null, joined by and / or, (grouped); values are JSON ("text", 10, true)',
    )
    q.add_argument(
        "--order-by",
        action="append",
        default=[],
        metavar="FIELD",
        help="sort by FIELD ('FIELD desc': descending); repeat or comma-separate for more (the key breaks ties)",
    )
    q.add_argument("--page", metavar="TOKEN", help="the next page: the token the previous page printed")
    q.add_argument("--count", action="store_true", help="print how many rows pass --where")
    q.set_defaults(fn=query)
    rp = subcommand(
        sub, "replay", "rebuild a view of the running runtime from history", "memoir replay posts_by_author"
    )
    rp.add_argument("view", metavar="VIEW", help="the view's name")
    rp.set_defaults(fn=replay)
