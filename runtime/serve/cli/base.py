"""What every `memoir` command is built from, so each command module holds only its own options.

Options come in groups, each added in one place: `where` (which data dir, journal, prefix and
app; every command), `nats` (the NATS URL and its credential and TLS flags, one titled group),
`client_options` (how a client command talks and prints: --json, --timeout; every command but
`run`). No parser accepts an abbreviated option (`--nats` is not `--nats-url`). How a command
ends — stdout, stderr, exit status — is one rule for all of them, in `outcome.py`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, NoReturn, TypeAlias

from ...model.app import App
from ...model.entity import EventSourcedEntity
from ...model.errors import CommandError, ConfigError, ErrorCode
from ..process import eventloop
from . import auth_flags
from .outcome import Failure, report, rule

# The `add_parser` of `memoir`'s subcommands: what `sub` is in `add(sub)`.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error follows the CLI's rule: one line, code `usage`, exit 2."""

    def error(self, message: str) -> NoReturn:
        failure = Failure("usage", f"{message} (see `{self.prog} --help`)")
        self.exit(report(failure, as_json="--json" in sys.argv[1:]))


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; a usage line of `memoir CMD [options] ARGS`: the options are listed below it."""

    def _format_usage(
        self,
        usage: str | None,
        actions: Iterable[argparse.Action],
        groups: Iterable[argparse._MutuallyExclusiveGroup],
        prefix: str | None,
    ) -> str:
        if usage is None:
            positionals = [a for a in actions if not a.option_strings]
            usage = " ".join(filter(None, [self._prog, "[options]", self._format_actions_usage(positionals, [])]))
        return super()._format_usage(usage, actions, groups, prefix)


def examples(*lines: str, client: bool = True) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + rule(client=client)


def command(
    sub: Subparsers, name: str, help: str, *example_lines: str, client: bool = True, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand's parser: its help (its line in `memoir --help`), description and examples; no abbreviations."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=examples(*example_lines, client=client),
        formatter_class=Formatter,
        allow_abbrev=False,
    )
    return p


def subcommand(sub: Subparsers, name: str, help: str, *example_lines: str) -> argparse.ArgumentParser:
    """A client subcommand: the `where`, NATS and client options, and examples in its epilog."""
    p = command(sub, name, help, *example_lines)
    where(p)
    client_options(p)
    return p


def where(p: argparse.ArgumentParser, *, app: bool = True) -> None:
    """Which runtime: every command. Client commands default to what `memoir run` recorded in the data dir."""
    g = p.add_argument_group("where (each also a MEMOIR_* environment variable)")
    g.add_argument("--data-dir", metavar="DIR", help="the runtime's data directory (default .memoir)")
    g.add_argument("--journal", dest="journal_url", metavar="URL", help="journal URL (default: SQLite in the data dir)")
    g.add_argument("--prefix", help="subject prefix (default memoir)")
    if app:
        g.add_argument("--app", help="the App as module:attribute (default: the data dir's, else entities:app)")
    p.add_argument_group("process").add_argument(
        "--loop", choices=eventloop.CHOICES, help="event loop (MEMOIR_LOOP; default: uvloop if installed)"
    )
    nats(p)


def nats(p: argparse.ArgumentParser) -> None:
    """An external NATS: its URL, credential and TLS, in one group (the embedded server needs none of them)."""
    g = p.add_argument_group(
        "NATS (an external server; each also a MEMOIR_NATS_* variable)",
        "Needed only for a NATS that `memoir run` did not start itself. No flag takes a secret: files, or"
        " MEMOIR_NATS_PASSWORD / MEMOIR_NATS_TOKEN.",
    )
    g.add_argument("--nats-url", metavar="URL", help="NATS URL (default: the embedded server `memoir run` started)")
    auth_flags.add_flags(g)


def client_options(p: argparse.ArgumentParser) -> None:
    """How a client command talks and prints: every command but `run`. Add client-wide options here."""
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="results as JSON Lines, and errors on stderr as JSON")
    g.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for NATS and a reply (default 5)")


def entity_type(app: App, type_name: str) -> type[EventSourcedEntity[Any]]:
    """The app's entity class, or the same `unknown_entity_type` answer a runtime gives."""
    try:
        return app.entity(type_name)
    except ConfigError:
        known = ", ".join(sorted(e.type_name for e in app.entities)) or "none"
        raise CommandError(
            ErrorCode.UNKNOWN_ENTITY_TYPE, f"app {app.name!r} has no entity type {type_name!r} (known: {known})"
        ) from None
