"""The CLI's one rule for how a command ends, so every subcommand ends the same way.

- Results go to stdout; nothing else does.
- An error is one line on stderr, `memoir: <code>: <message>`, or with `--json` one JSON
  object on stderr in the wire protocol's reply shape: `{"ok": false, "error": {...}}`.
- Exit 0: done. Exit 1: asked and answered no: an error code of the protocol (`rejected`,
  `invalid`, `conflict`, `unknown_entity_type`, …) or `not_found` (no events, no row, no such
  seq). Exit 2: could not ask: `usage`, `config`, `locked` (the data dir is in use),
  `unreachable` (no NATS, or no runtime serving), `timeout`, `storage_full`. 130 on Ctrl-C; 141 when stdout is
  closed early (`memoir export | head`), as a tool killed by SIGPIPE reports.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from ...model.errors import CommandError, MemoirError
from ..process.datadir import DataDirLocked

ANSWERED = 1  # the request was understood and answered with an error
NOT_ASKED = 2  # the request could not be made: bad usage or config, nothing to reach
INTERRUPTED = 130
BROKEN_PIPE = 141

RULE = """\
output: results on stdout; an error is one line on stderr, "memoir: <code>: <message>"{json}.
exit status: 0 done; 1 answered with an error (rejected, invalid, conflict, not_found, ...);
2 could not ask (usage, config, locked, unreachable, timeout, storage_full)."""
JSON_RULE = """
(with --json: {"ok": false, "error": {"code": ..., "message": ..., "details": ...}} on stderr)"""


def rule(*, client: bool = True) -> str:
    """The rule as --help prints it; `memoir run` has no --json."""
    return RULE.format(json=JSON_RULE if client else "")


class Failure(MemoirError):
    """A CLI error that is not a protocol reply: its code and its exit status."""

    def __init__(self, code: str, message: str, *, status: int = NOT_ASKED, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details


def not_found(message: str) -> Failure:
    return Failure("not_found", message, status=ANSWERED)


def unreachable(message: str) -> Failure:
    return Failure("unreachable", message)


def report(exc: MemoirError, *, as_json: bool) -> int:
    """Print `exc` by the rule above and return the exit status."""
    if isinstance(exc, (CommandError, Failure)):
        code, message, details = str(exc.code), exc.message, exc.details
        status = exc.status if isinstance(exc, Failure) else ANSWERED
    else:
        (code, message), details, status = _code_of(exc), None, NOT_ASKED
    message = " ".join(message.split("\n"))
    if as_json:
        error = {"code": code, "message": message, "details": details}
        print(msgspec.json.encode({"ok": False, "error": error}).decode(), file=sys.stderr)
    else:
        print(f"memoir: {code}: {message}", file=sys.stderr)
    return status


def _code_of(exc: MemoirError) -> tuple[str, str]:
    """The code of an error raised below the CLI (by `memoir run`, mostly), and its message."""
    message = str(exc)
    if isinstance(exc, DataDirLocked):
        return "locked", message
    if message.startswith("storage full: "):
        return "storage_full", message.removeprefix("storage full: ")
    if message.startswith("cannot connect to NATS"):
        return "unreachable", message
    return "config", message
