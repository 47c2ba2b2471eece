"""Durations as people write them: one helper for every time the CLI prints."""

from __future__ import annotations

import pytest

from runtime.serve.cli.durations import relative, span


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.4, "0s"),
        (1, "1s"),
        (59.9, "59s"),
        (303, "5m 3s"),
        (3600, "1h"),
        (7260, "2h 1m"),
        (86400 * 2 + 3600 * 4 + 5, "2d 4h"),
        (-1, "1s"),  # the sign is the caller's word, not a digit
    ],
)
def test_span_shows_the_two_largest_units(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_relative_says_which_side_of_now() -> None:
    assert relative(303) == "in 5m 3s"
    assert relative(-7200) == "2h ago"
    assert relative(-1, past="overdue by {}") == "overdue by 1s"
