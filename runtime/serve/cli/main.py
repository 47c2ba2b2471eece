"""The `memoir` command line: the parser over the command groups in `commands/`, and how a run ends.

Each command group is one module in `commands/` with an `add(sub)`; what they share (option
groups, the parser class, examples) is `base.py`; how results print is `output.py`; how a
command ends — stdout, stderr, exit status — is one rule for all of them, in `outcome.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ...model.errors import MemoirError
from ..process import eventloop
from ..process.appspec import cwd_on_path
from .base import Formatter, Parser, examples
from .commands import GROUPS
from .outcome import BROKEN_PIPE, INTERRUPTED, report


def _version() -> str:
    try:
        return version("memoir")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="memoir",
        description="Event-sourced entities as async actors.",
        epilog=examples(
            "memoir run shop:app                 # serve the App in ./shop.py",
            'memoir send inventory XYZ-1 receive \'{"units": 5, "on": "2022-03-01"}\'',
            "memoir state inventory XYZ-1 --seq 1",
            "memoir COMMAND --help               # each command's options and examples",
        ),
        formatter_class=Formatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"memoir {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="memoir")  # not "memoir [options]"
    for group in GROUPS:
        group.add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cwd_on_path()  # `memoir run shop:app` finds ./shop.py, as `python -m` would
    args = parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(eventloop.run(args.fn, args, loop=getattr(args, "loop", None)))
    except MemoirError as exc:
        return report(exc, as_json=as_json)
    except BrokenPipeError:
        return _broken_pipe()
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseExceptionGroup as group:  # one error out of a task group (a journal's, a server's)
        sole = _sole(group)
        if isinstance(sole, MemoirError):
            return report(sole, as_json=as_json)
        if isinstance(sole, BrokenPipeError):
            return _broken_pipe()
        raise


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a (nested) group carries, or None if it carries several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


def _broken_pipe() -> int:
    """The reader of stdout went away (`| head`): stop quietly, as a tool killed by SIGPIPE does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit cannot fail again
    return BROKEN_PIPE
