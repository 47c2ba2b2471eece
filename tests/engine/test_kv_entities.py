"""Key-value entities on every journal (memory, SQLite, PostgreSQL, JetStream).

The same guarantees as event-sourced entities, because a state change is one stored event:
set, get and delete; optimistic concurrency between two writers; command-id dedupe in memory
and after a restart; recovery to the last state from a snapshot, not a fold of every state.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest
from support.journals import JournalFactory

from entities.cart import Cart, CartState
from runtime import CommandError, Envelope, ErrorCode, Runtime, history, state_at
from runtime.model.entity import model_of
from runtime.model.kv_entity import STATE_DELETED, STATE_SET
from runtime.model.sealing import is_sealed

pytestmark = pytest.mark.anyio


async def _names(rt: Runtime, entity_id: str) -> list[str]:
    return [e.name for e in await rt.journal.read("cart", entity_id)]


async def test_set_get_delete_and_set_again(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal, Runtime([Cart], journal) as rt:
        first = await rt.ask("cart", "c1", "add_item", {"sku": "apple", "quantity": 2})
        assert first.result == CartState({"apple": 2}) and first.seq == 1
        await rt.ask("cart", "c1", "add_item", {"sku": "pear", "quantity": 1})
        assert (await rt.ask("cart", "c1", "get")).result == CartState({"apple": 2, "pear": 1})

        cleared = await rt.ask("cart", "c1", "clear")
        assert cleared.seq == 3
        assert (await rt.ask("cart", "c1", "get")).result == CartState()
        again = await rt.ask("cart", "c1", "add_item", {"sku": "fig", "quantity": 3})  # usable after a delete
        assert again.result == CartState({"fig": 3}) and again.seq == 4
        assert await _names(rt, "c1") == [STATE_SET, STATE_SET, STATE_DELETED, STATE_SET]

        with pytest.raises(CommandError) as refused:  # a refusal stores nothing
            await rt.ask("cart", "c1", "remove_item", {"sku": "apple"})
        assert refused.value.code == ErrorCode.REJECTED
        assert await journal.head("cart", "c1") == 4

        states = [item.state async for item in history(journal, model_of(Cart), "c1")]
        assert states == [
            CartState({"apple": 2}),
            CartState({"apple": 2, "pear": 1}),
            CartState(),
            CartState({"fig": 3}),
        ]
        assert await state_at(journal, model_of(Cart), "c1", seq=3) == (CartState(), 3)  # what HTTP's ?seq= reads


async def test_two_writers_one_conflicts_and_retries_on_the_new_state(journal_factory: JournalFactory) -> None:
    """Two runtimes on one journal (two processes): the stale one is refused, nothing is lost."""
    async with (
        journal_factory.open() as journal,
        Runtime([Cart], journal) as a,
        Runtime([Cart], journal) as b,
    ):
        await a.ask("cart", "shared", "add_item", {"sku": "apple", "quantity": 1})
        await b.ask("cart", "shared", "get")  # b's actor is live at seq 1
        await a.ask("cart", "shared", "add_item", {"sku": "pear", "quantity": 1})  # seq 2, which b has not seen

        with pytest.raises(CommandError) as stale:
            await b.ask("cart", "shared", "add_item", {"sku": "fig", "quantity": 1})
        assert stale.value.code == ErrorCode.CONFLICT and "nothing was stored" in stale.value.message
        retried = await b.ask("cart", "shared", "add_item", {"sku": "fig", "quantity": 1})  # reloaded first
        assert retried.seq == 3 and retried.result == CartState({"apple": 1, "pear": 1, "fig": 1})


async def test_a_repeated_command_id_is_answered_once_in_memory_and_after_restart(
    journal_factory: JournalFactory,
) -> None:
    async with journal_factory.open() as journal:
        async with Runtime([Cart], journal, dedupe_window=2) as rt:
            first = await rt.ask("cart", "c2", "add_item", {"sku": "apple", "quantity": 1}, command_id="add-1")
            again = await rt.ask("cart", "c2", "add_item", {"sku": "apple", "quantity": 1}, command_id="add-1")
            assert again.duplicate and again.seq == first.seq == 1 and again.result == first.result
            for i in range(5):  # push "add-1" out of the in-memory window
                await rt.ask("cart", "c2", "add_item", {"sku": f"s{i}", "quantity": 1}, command_id=f"other-{i}")
        async with Runtime([Cart], journal, dedupe_window=2) as rt:  # a new process: the journal remembers
            repeat = await rt.ask("cart", "c2", "add_item", {"sku": "apple", "quantity": 1}, command_id="add-1")
            assert repeat.duplicate and repeat.seq == 1 and repeat.result == CartState({"apple": 1})
            assert await journal.head("cart", "c2") == 6
            assert (await rt.ask("cart", "c2", "get")).result.items["apple"] == 1  # counted once


async def test_recovery_is_the_last_state_from_a_snapshot_and_the_few_after_it(
    journal_factory: JournalFactory,
) -> None:
    async with journal_factory.open() as journal:
        async with Runtime([Cart], journal) as rt:
            for i in range(30):
                await rt.ask("cart", "c3", "add_item", {"sku": f"s{i % 4}", "quantity": 1})
            await rt.ask("cart", "c3", "checkout")
            await rt.ask("cart", "gone", "add_item", {"sku": "apple", "quantity": 1})
            await rt.ask("cart", "gone", "clear")
        recovery = await journal.recover("cart", "c3")  # the runtime's exit drained its snapshot queue
        assert recovery.head == 31 and recovery.snapshot is not None and recovery.snapshot.seq == 16
        assert [e.seq for e in recovery.events] == list(range(17, 32)), "at most snapshot_every states to read"
        async with Runtime([Cart], journal) as rt:
            state = (await rt.ask("cart", "c3", "get")).result
            assert state == CartState({"s0": 8, "s1": 8, "s2": 7, "s3": 7}, checked_out=True)
            assert (await rt.ask("cart", "gone", "get")).result == CartState()


class Unsnapshotted(Cart, name="cart_nosnap"):
    """The same cart with snapshots off: recovery reads every change but decodes only the newest."""

    snapshot_every: ClassVar[int] = 0


async def test_recovery_without_snapshots_takes_the_newest_state(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal:
        async with Runtime([Unsnapshotted], journal) as rt:
            for i in range(10):
                await rt.ask("cart_nosnap", "n", "add_item", {"sku": "apple", "quantity": 1}, command_id=f"a{i}")
            await rt.ask("cart_nosnap", "n", "clear", command_id="clear")
            await rt.ask("cart_nosnap", "n", "add_item", {"sku": "pear", "quantity": 2}, command_id="last")
        assert await journal.load_snapshot("cart_nosnap", "n") is None
        async with Runtime([Unsnapshotted], journal) as rt:
            assert (await rt.ask("cart_nosnap", "n", "get")).result == CartState({"pear": 2})
            repeat = await rt.ask("cart_nosnap", "n", "add_item", {"sku": "apple", "quantity": 1}, command_id="a3")
            assert repeat.duplicate and repeat.result == CartState({"apple": 4})  # an older change's reply


async def test_recovery_decodes_only_the_newest_state(journal_factory: JournalFactory) -> None:
    """An older stored state that no longer decodes is never read: no fold of past states."""
    async with journal_factory.open() as journal:
        stale = Envelope(
            entity_type="cart_nosnap",
            entity_id="old",
            seq=1,
            name=STATE_SET,
            version=1,
            payload=b'{"state": "not a cart state"}',
            recorded_at=0,
        )
        await journal.append([stale], 0)
        async with Runtime([Unsnapshotted], journal) as rt:
            with pytest.raises(CommandError, match="cannot decode event cart_nosnap/old seq 1"):  # the only state
                await rt.ask("cart_nosnap", "old", "get")
        fresh = msgspec.structs.replace(stale, seq=2, payload=b'{"state": {"items": {"fig": 1}}}')
        await journal.append([fresh], 1)
        async with Runtime([Unsnapshotted], journal) as rt:
            assert (await rt.ask("cart_nosnap", "old", "get")).result == CartState({"fig": 1})


class SecretCart(Cart, name="secret_cart", encrypted=True):
    """A cart whose stored states are sealed under its own data key."""


async def test_an_encrypted_key_value_entity_stores_its_states_sealed(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal:
        async with Runtime([SecretCart], journal) as rt:
            await rt.ask("secret_cart", "s", "add_item", {"sku": "marker-sku", "quantity": 1})
            await rt.ask("secret_cart", "s", "clear")
        stored = await journal.read("secret_cart", "s")
        assert [e.name for e in stored] == [STATE_SET, STATE_DELETED]
        assert all(is_sealed(e.payload) and b"marker-sku" not in e.payload for e in stored)
        async with Runtime([SecretCart], journal) as rt:
            assert (await rt.ask("secret_cart", "s", "get")).result == CartState()
