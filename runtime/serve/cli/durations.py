"""Durations as people write them (`5m 3s`, `2h`, `in 1d 4h`, `overdue by 1s`): one helper, so no
command prints a `timedelta` (`-1 day, 23:59:59`) or a float of seconds."""

from __future__ import annotations

_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def span(seconds: float) -> str:
    """The two largest non-zero units of |seconds|, whole seconds down: `5m 3s`, `2h`, `0s`."""
    left = int(abs(seconds))
    parts = []
    for name, size in _UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{name}")
        if parts and (not count or len(parts) == 2):
            break  # two neighbouring units at most: `2h 0m 5s` reads as `2h`
    return " ".join(parts) or "0s"


def relative(seconds: float, *, future: str = "in {}", past: str = "{} ago") -> str:
    """`seconds` from now as words: `in 5m 3s`, or (negative) `2h ago` / `overdue by 1s`."""
    return (future if seconds >= 0 else past).format(span(seconds))
