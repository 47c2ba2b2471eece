"""The `memoir` command line.

Every subcommand is a small async function; errors from outside (a bad URL,
a bad argument) are one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .errors import CommandError, MemoirError
from .entity import model_of
from .history import history
from .journal import open_journal
from .runtime import Runtime

DEFAULT_DATA_DIR = ".memoir"


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("MEMOIR_DATA_DIR") or DEFAULT_DATA_DIR)


def journal_url(args: argparse.Namespace) -> str:
    """The journal URL: --journal, else MEMOIR_JOURNAL_URL, else SQLite in the data directory."""
    url = args.journal or os.environ.get("MEMOIR_JOURNAL_URL")
    return url or f"sqlite:///{data_dir(args) / 'journal.db'}"


# -- memoir demo -------------------------------------------------------------------------------

_SEED: list[tuple[str, dict[str, Any]]] = [
    ("open", {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}),
    ("receive", {"units": 100, "on": "2022-03-01"}),
    ("sell", {"units": 20, "on": "2022-03-15"}),
    ("receive", {"units": 50, "on": "2022-03-15"}),
    ("sell", {"units": 20, "on": "2022-04-01"}),
    ("adjust", {"units": -20, "on": "2022-04-01", "reason": "stock count"}),
]


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())


def _fmt_event(event: msgspec.Struct) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(event).items())
    return f"{type(event).__name__}({fields})"


def _fmt(d: date | None) -> str:
    return d.isoformat() if d else "-"


async def demo(args: argparse.Namespace) -> int:
    from entities import InventoryItem, app

    url = journal_url(args)
    sku = args.sku
    out = sys.stdout
    out.write(f"Memoir demo: inventory item {sku}, event-sourced on {url}\n\n")
    async with open_journal(url) as journal:
        async with Runtime(app, journal) as rt:
            out.write("commands (each carries a command id, so running the demo again changes nothing):\n")
            for n, (name, cmd_args) in enumerate(_SEED, 1):
                try:
                    reply = await rt.ask("inventory", sku, name, cmd_args, command_id=f"demo-{sku}-{n}")
                except CommandError as exc:
                    out.write(f"  {name}({_fmt_args(cmd_args)}) -> {exc.code}: {exc.message}\n")
                    continue
                again = "  (repeat: first reply returned, nothing stored)" if reply.duplicate else ""
                out.write(f"  {name}({_fmt_args(cmd_args)}) -> {reply.result} units, seq {reply.seq}{again}\n")
            try:
                await rt.ask("inventory", sku, "sell", {"units": 1000, "on": "2022-04-02"})
            except CommandError as exc:
                out.write(f"  sell(units=1000, on=2022-04-02) -> {exc.code}: {exc.message}\n")

        out.write(f"\nhistory of inventory/{sku}, rebuilt from the journal (state after each event):\n")
        out.write(f"  {'seq':>3}  {'event':<58} {'units':>5}  {'last in':<10}  {'last out':<10}\n")
        async for item in history(journal, model_of(InventoryItem), sku):
            s = item.state
            out.write(
                f"  {item.envelope.seq:>3}  {_fmt_event(item.event):<58} {s.units:>5}  {_fmt(s.last_in):<10}  {_fmt(s.last_out):<10}\n"
            )
    out.write(
        "\nThe state was never stored: it is the fold of the events above, so any past state can be"
        " rebuilt.\n"
    )
    return 0


# -- entry point ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="memoir", description="Event-sourced entities as async actors.")
    p.add_argument("--journal", help="journal URL (env MEMOIR_JOURNAL_URL; default sqlite in the data dir)")
    p.add_argument("--data-dir", help=f"data directory (env MEMOIR_DATA_DIR; default {DEFAULT_DATA_DIR})")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the seed's inventory scenario and print its history")
    d.add_argument("--sku", default="XYZ-1", help="the item's id (default XYZ-1)")
    d.set_defaults(fn=demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(anyio.run(args.fn, args))
    except MemoirError as exc:
        print(f"memoir: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
