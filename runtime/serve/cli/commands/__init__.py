"""The `memoir` subcommands, one module per command group, each with an `add(sub)` that builds its
parsers and the async functions that run them. `GROUPS` is the order --help lists them: add a new
module here."""

from __future__ import annotations

from . import archive, cluster, deadletters, demo, export, forget, history, region, run, schema, send, timers, views

GROUPS = [run, send, history, timers, views, deadletters, export, archive, forget, cluster, region, schema, demo]

__all__ = [
    "GROUPS",
    "archive",
    "cluster",
    "deadletters",
    "demo",
    "export",
    "forget",
    "history",
    "region",
    "run",
    "schema",
    "send",
    "timers",
    "views",
]
