"""Command ids hold beyond the actor's in-memory window: the journal is the source of truth.

Each test runs on every journal backend (see support.journals.BACKENDS).
"""

from __future__ import annotations

import pytest
from support.journals import JournalFactory

from entities.inventory import InventoryItem
from runtime import Runtime

pytestmark = pytest.mark.anyio

RECEIVE = {"units": 1, "on": "2022-03-01"}


async def test_an_id_repeated_after_300_other_commands_is_a_duplicate(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal, Runtime([InventoryItem], journal, dedupe_window=256) as rt:
        first = await rt.ask("inventory", "HOT", "receive", RECEIVE, command_id="the-id")
        for i in range(300):
            await rt.ask("inventory", "HOT", "receive", RECEIVE, command_id=f"other-{i}")
        again = await rt.ask("inventory", "HOT", "receive", RECEIVE, command_id="the-id")
        assert again.duplicate and again.seq == first.seq == 1
        assert again.result == first.result == 1  # the first reply, not a new one
        assert await journal.head("inventory", "HOT") == 301, "nothing stored for the repeat"
        state = await rt.ask("inventory", "HOT", "get")
        assert state.result.units == 301


async def test_a_repeat_after_recovery_is_a_duplicate(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal:
        async with Runtime([InventoryItem], journal, dedupe_window=4) as rt:
            for i in range(10):
                await rt.ask("inventory", "X", "receive", RECEIVE, command_id=f"c-{i}")
        async with Runtime([InventoryItem], journal, dedupe_window=4) as rt:  # a new process: cold actors
            again = await rt.ask("inventory", "X", "receive", RECEIVE, command_id="c-2")
            assert again.duplicate and again.seq == 3 and again.result == 3
            assert await journal.head("inventory", "X") == 10


async def test_a_repeat_the_entity_would_now_refuse_still_gets_its_first_answer(
    journal_factory: JournalFactory,
) -> None:
    """`open` is refused once the item is open; its repeat beyond the window answers the first reply."""
    async with journal_factory.open() as journal, Runtime([InventoryItem], journal, dedupe_window=2) as rt:
        opened = await rt.ask("inventory", "Y", "open", {"units": 5}, command_id="open-Y")
        for i in range(5):
            await rt.ask("inventory", "Y", "receive", RECEIVE, command_id=f"r-{i}")
        stored = await journal.find_command("inventory", "Y", "open-Y")
        again = await rt.ask("inventory", "Y", "open", {"units": 5}, command_id="open-Y")
        assert again.duplicate and again.seq == opened.seq and again.result == opened.result
        assert stored is not None and stored[0] == opened.seq
        assert await journal.head("inventory", "Y") == 6
