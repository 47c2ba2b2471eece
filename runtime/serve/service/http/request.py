"""Reading an HTTP request: its path segments, headers and query string, each wrong part named."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qsl, unquote

from ....model.errors import CommandError, ErrorCode


class HttpError(CommandError):
    """An answer decided here, before anything reached NATS; same envelope as a protocol error."""


class Disconnected(Exception):
    """The client went away while we read its request."""


def segment(raw: str, what: str) -> str:
    """One path segment percent-decoded on its own, so an id may hold `/`; not UTF-8 is `invalid`."""
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(ErrorCode.INVALID, f"{what} {raw[:60]!r} is not UTF-8 once percent-decoded") from None


def ascii_header(name: str, value: str) -> str:
    """A header value that goes on to NATS: printable ASCII, or `invalid` naming the header."""
    if not value.isascii() or not value.isprintable():
        raise HttpError(ErrorCode.INVALID, f"header {name} must be printable ASCII")
    return value


_INTEGER = re.compile(r"-?[0-9]{1,20}")


class Query:
    """The query string, one value per name; a bad value is `invalid` naming the parameter."""

    def __init__(self, raw: bytes) -> None:
        self.values = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        raw = self.values.get(name)
        if raw is None:
            return default
        value = int(raw) if _INTEGER.fullmatch(raw) else low - 1  # int() would take " 5" and "5_0"
        if not low <= value <= high:
            raise HttpError(ErrorCode.INVALID, f"query parameter {name} must be an integer from {low} to {high}")
        return value

    def time(self, name: str) -> dt.datetime | None:
        raw = self.values.get(name)
        if raw is None:
            return None
        try:
            value = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise HttpError(ErrorCode.INVALID, f"query parameter {name} is not an ISO 8601 time") from None
        if value.tzinfo is None:
            raise HttpError(ErrorCode.INVALID, f"query parameter {name} has no timezone; add Z or +hh:mm")
        return value
