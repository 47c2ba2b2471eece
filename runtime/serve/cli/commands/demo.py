"""`memoir demo`: the seed's inventory scenario played into a data dir of its own, and its history."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from typing import Any

import msgspec

from ....engine.history import history
from ....engine.runtime import Runtime
from ....journal import open_journal
from ....model.entity import model_of
from ....model.errors import CommandError, ConfigError
from ...process.appspec import load_app
from ...process.datadir import lock_data_dir
from ..base import Subparsers, subcommand
from ..target import client_target

_SEED: list[tuple[str, dict[str, Any]]] = [
    ("open", {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}),
    ("receive", {"units": 100, "on": "2022-03-01"}),
    ("sell", {"units": 20, "on": "2022-03-15"}),
    ("receive", {"units": 50, "on": "2022-03-15"}),
    ("sell", {"units": 20, "on": "2022-04-01"}),
    ("adjust", {"units": -20, "on": "2022-04-01", "reason": "stock count"}),
]
_DEMO_APP = "entities:app"
_DEMO_DATA_DIR = ".memoir-demo"  # not .memoir: the demo never writes into a runtime's journal by default


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())


def _fmt_event(event: msgspec.Struct) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(event).items())
    return f"{type(event).__name__}({fields})"


def _fmt(d: date | None) -> str:
    return d.isoformat() if d else "-"


async def demo(args: argparse.Namespace) -> int:
    """Writes straight into the data dir's journal, so it holds the data dir as `memoir run` does.

    The demo's app is found by name, as `memoir run` finds its default: the framework never imports
    its examples (a contract in CI holds it).
    """
    app = load_app(_DEMO_APP)
    inventory = model_of(app.entity("inventory"))
    if not args.data_dir and not os.environ.get("MEMOIR_DATA_DIR"):
        args.data_dir = _DEMO_DATA_DIR
    target = client_target(args)
    if target.manifest is not None and target.manifest.app != _DEMO_APP:
        raise ConfigError(
            f"data dir {target.data} belongs to app {target.manifest.app}; the demo plays {_DEMO_APP}:"
            " give it a data dir of its own (--data-dir)"
        )
    url = target.settings.journal()
    sku = args.sku
    out = sys.stdout
    with lock_data_dir(target.data, "the demo writes straight into the journal: give it its own --data-dir"):
        out.write(f"Memoir demo: inventory item {sku}, event-sourced on {url}\n\n")
        async with open_journal(url, nats_auth=target.auth) as journal:
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
            async for item in history(journal, inventory, sku):
                s, seq, event = item.state, item.envelope.seq, _fmt_event(item.event)
                out.write(f"  {seq:>3}  {event:<58} {s.units:>5}  {_fmt(s.last_in):<10}  {_fmt(s.last_out):<10}\n")
    out.write("\nThe state was never stored: it is the fold of the events above, so any past state can be rebuilt.\n")
    return 0


def add(sub: Subparsers) -> None:
    d = subcommand(
        sub,
        "demo",
        f"play the seed's inventory scenario and print its history (data dir: {_DEMO_DATA_DIR} unless given)",
        "memoir demo                          # in ./.memoir-demo, beside a running `memoir run` too",
        "memoir demo --sku ABC-2 --data-dir /tmp/memoir-demo",
    )
    d.add_argument("--sku", default="XYZ-1", help="the item's id (default XYZ-1)")
    d.set_defaults(fn=demo)
