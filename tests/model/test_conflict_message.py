"""A conflict says where once, and its advice fits a sender who gave no command id."""

from __future__ import annotations

import pytest

from entities import app
from runtime import CommandError, ErrorCode, MemoryJournal, Runtime

pytestmark = pytest.mark.anyio

OPEN = {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}
RECEIVE = {"units": 1, "on": "2022-03-01"}


async def test_a_second_writer_behind_the_actors_back_is_one_clear_conflict() -> None:
    journal = MemoryJournal()
    async with journal, Runtime(app, journal) as first, Runtime(app, journal) as second:
        await first.ask("inventory", "XYZ-1", "open", OPEN)
        for _ in range(2):  # the second runtime recovers, then writes seq 2 and 3 behind the first's back
            await second.ask("inventory", "XYZ-1", "receive", RECEIVE)
        with pytest.raises(CommandError) as caught:
            await first.ask("inventory", "XYZ-1", "receive", RECEIVE)
    assert caught.value.code == ErrorCode.CONFLICT
    message = caught.value.message
    assert message.count("inventory/XYZ-1") == 1, message
    assert message == (
        "inventory/XYZ-1: another writer stored events first (expected seq 1, found 3); nothing was stored:"
        " send the command again (with its command id, if it had one)"
    )
