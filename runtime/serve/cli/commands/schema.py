"""`memoir schema`: the app's NATS protocol as AsyncAPI 3.0, or its events as JSON Schema (a document)."""

from __future__ import annotations

import argparse

from ...service.specs.asyncapi import render
from ..base import Subparsers, subcommand
from ..target import client_target


async def schema(args: argparse.Namespace) -> int:
    target = client_target(args)
    print(render(target.app(), prefix=target.settings.prefix, fmt=args.format))
    return 0


def add(sub: Subparsers) -> None:
    sc = subcommand(
        sub,
        "schema",
        "the app's NATS protocol as an AsyncAPI 3.0 document, or its events as JSON Schema",
        "memoir schema > asyncapi.json",
        "memoir schema --app shop:app --format jsonschema",
    )
    sc.add_argument("--format", choices=["asyncapi", "jsonschema"], default="asyncapi", help="(default asyncapi)")
    sc.set_defaults(fn=schema)
