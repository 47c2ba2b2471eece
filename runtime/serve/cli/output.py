"""How results are printed, one style per kind, so every command reads the same.

For people: an aligned table with a header row (a record is a one-row table), or a sentence
for an action's confirmation. For `--json`: JSON Lines, one compact object per line: a record
is one line, a list one line per item. Documents (`memoir schema`) and the journal archive
(`memoir export`, always JSON Lines) are their own formats.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

__all__ = ["cell", "columns_of", "json_line", "print_rows", "table"]


def json_line(value: Any) -> str:
    """One compact JSON document on one line."""
    return msgspec.json.encode(value).decode()


def cell(value: Any) -> str:
    """A value as a table shows it: text as is, nothing as `-`, anything else as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value or '""'
    return json_line(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns two spaces apart, each as wide as its widest cell; the last one unpadded."""
    lines = [list(header), *([cell(v) for v in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]) for line in lines)


def columns_of(records: Sequence[Any]) -> list[str]:
    """The fields of mappings, in first-seen order; one `value` column for anything else."""
    if not records or not all(isinstance(r, dict) for r in records):
        return ["value"]
    return list(dict.fromkeys(k for r in records for k in r))


def print_rows(
    args: argparse.Namespace, header: Sequence[str], rows: Sequence[Sequence[Any]], items: Sequence[Any]
) -> None:
    """A list: the table of `rows` for people, or each of `items` as one JSON line for `--json`."""
    if args.json:
        for item in items:
            print(json_line(item))
    else:
        print(table([h.upper() for h in header], rows))
