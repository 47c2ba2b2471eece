"""What a console page takes: the request's fields and the few parts of the console it reads.

The pages (`entity`, `operations`) take these, never the console's app module, which imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from .....model.errors import CommandError

if TYPE_CHECKING:
    from ...metrics import Metrics
    from ..app import HttpApi


class ConsolePart(Protocol):
    """The console as its pages see it: the HTTP API it is mounted beside, and the metrics."""

    api: HttpApi
    metrics: Metrics


class Params:
    """A query string's or form's fields, one value each."""

    def __init__(self, raw: bytes | str) -> None:
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        self.values = {k: v[0] for k, v in parse_qs(text, max_num_fields=32).items()}

    def text(self, name: str, default: str | None = None) -> str:
        value = self.values.get(name, default)
        if value is None:
            raise CommandError("invalid", f"{name} is required")
        return value[:4096]

    def integer(self, name: str) -> int | None:
        value = self.values.get(name, "")
        if not value:
            return None
        if not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise CommandError("invalid", f"{name} must be a positive integer")
        return int(value)
