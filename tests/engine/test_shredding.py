"""Crypto-shredding over every journal: sealed at rest, intact across restarts, gone after forget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from crypto.people import MARKER, EmailChanged, Erased, Note, Person
from support.journals import JournalFactory

from runtime import CommandError, ConfigError, Journal, MemoryJournal, Runtime
from runtime.engine.keyring import KeyRing
from runtime.model.sealing import is_sealed, is_sealed_text
from runtime.testing import EntityTestKit

pytestmark = pytest.mark.anyio

APP = [Person, Note]


def _files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


async def _stored(journal: Journal, entity_type: str, entity_id: str) -> list[tuple[int, int, str]]:
    return [(e.seq, e.position, e.name) for e in await journal.read(entity_type, entity_id)]


async def test_sealed_at_rest_survives_restart_and_forget_shreds_one_entity(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:
        for i in range(4):  # a snapshot at seq 3
            await rt.ask("person", "ann", "change", {"email": f"ann{i}-{MARKER}@x"}, command_id=f"c{i}")
        await rt.ask("person", "bob", "change", {"email": f"bob-{MARKER}@x"})
        await rt.ask("note", "n1", "add", {"text": "plain"})

        events = await journal.read("person", "ann")
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert all(is_sealed(e.payload) and MARKER.encode() not in e.payload for e in events)
        assert all(is_sealed_text(e.reply) and MARKER.encode() not in (e.reply or b"") for e in events)
        assert (await journal.read("note", "n1"))[0].payload == b'{"text":"plain"}'  # other types untouched

    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:  # a restart
        snap = await journal.load_snapshot("person", "ann")
        assert snap is not None and snap.seq == 3 and is_sealed(snap.payload)
        state = (await rt.ask("person", "ann", "get")).result
        assert (state.email, state.changes) == (f"ann3-{MARKER}@x", 4)
        again = await rt.ask("person", "ann", "change", {"email": "other"}, command_id="c1")  # a repeat
        assert again.duplicate and again.result == f"ann1-{MARKER}@x #2"
        before = await _stored(journal, "person", "ann")
        last = await journal.last_position()
        entry = await journal.key_store().get("person", "ann")
        assert entry is not None and entry.material is not None
        if journal_factory.backend.name in ("sqlite", "nats"):  # stores in files: the key is there to find
            assert entry.material in _files(journal_factory.directory)

        assert await rt.forget("person", "ann") is True
        assert entry.material not in _files(journal_factory.directory)  # erased from the store's files
        with pytest.raises(CommandError) as gone:
            await rt.ask("person", "ann", "get")
        assert gone.value.code == "forgotten" and "person/ann" in gone.value.message
        assert (await rt.ask("person", "bob", "get")).result.email == f"bob-{MARKER}@x"

        after = [*before, (5, last + 1, "memoir.Forgotten")]  # the signal for views and consumers, in the clear
        assert await _stored(journal, "person", "ann") == after  # seqs, positions, names: all still there
        assert await journal.load_snapshot("person", "ann") is None
        ring = KeyRing(journal.key_store())  # a reader that never cached the key
        opened = [await ring.open(e) for e in await journal.read("person", "ann")]
        assert opened[:4] == [None] * 4 and opened[4] is not None and opened[4].payload == b"{}"
        assert [await ring.open(e) is not None for e in await journal.read("person", "bob")] == [True]

    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:  # still forgotten after a restart
        with pytest.raises(CommandError) as gone:
            await rt.ask("person", "ann", "change", {"email": "back"})
        assert gone.value.code == "forgotten"
        assert await rt.forget("person", "ann") is False  # idempotent
        assert await _stored(journal, "person", "ann") == after


async def test_forget_refuses_bad_requests_and_stores_nothing(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:
        await rt.ask("person", "ann", "change", {"email": "a"})
        await rt.ask("note", "n1", "add", {"text": "plain"})
        last = await journal.last_position()
        cases = [
            (("ghost", "ann"), "unknown_entity_type", "'ghost'"),
            (("note", "n1"), "invalid", "not encrypted"),
            (("person", "nobody"), "rejected", "person/nobody has no events"),
            (("person", ""), "invalid", "id"),
        ]
        for (entity_type, entity_id), code, words in cases:
            with pytest.raises(CommandError) as bad:
                await rt.forget(entity_type, entity_id)
            assert bad.value.code == code and words in bad.value.message, bad.value
        assert await journal.last_position() == last
        assert await journal.key_store().get("person", "nobody") is None  # no tombstone for a typo
        assert (await rt.ask("person", "ann", "get")).result.email == "a"
        with pytest.raises(CommandError) as bad:  # forget() on a type that is not encrypted: nothing stored
            await rt.ask("note", "n1", "forget_me")
        assert bad.value.code == "internal" and "encrypted=True" in bad.value.message
        assert await journal.last_position() == last


async def test_the_forget_effect_persists_its_event_then_destroys_the_key(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:
        await rt.ask("person", "ann", "change", {"email": "a"})
        reply = await rt.ask("person", "ann", "erase", {"reason": "GDPR art. 17"})
        assert (reply.result, reply.seq) == (1, 3)
        with pytest.raises(CommandError) as gone:
            await rt.ask("person", "ann", "get")
        assert gone.value.code == "forgotten"
        assert [e.name for e in await journal.read("person", "ann")] == ["EmailChanged", "Erased", "memoir.Forgotten"]
        entry = await journal.key_store().get("person", "ann")
        assert entry is not None and entry.forgotten


async def test_deleting_an_encrypted_entity_destroys_its_key_too(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:
        await rt.ask("person", "ann", "change", {"email": "a"})
        await rt.ask("person", "ann", "remove")
        entry = await journal.key_store().get("person", "ann")
        assert entry is not None and entry.forgotten  # deleted rows may linger in free pages: unreadable
    async with journal_factory.open() as journal, Runtime(APP, journal) as rt:
        with pytest.raises(CommandError, match="was deleted"):
            await rt.ask("person", "ann", "get")


def test_the_testkit_reports_a_forget_and_refuses_it_on_a_plain_type() -> None:
    kit = EntityTestKit(Person, "ann")
    kit.given(EmailChanged("a"))
    done = kit.when("erase", reason="asked")
    assert done.forgotten and [type(e) for e in done.events] == [Erased]
    with pytest.raises(ConfigError, match="encrypted=True"):
        EntityTestKit(Note, "n").when("forget_me")


async def test_forgetting_again_completes_an_interrupted_forget(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal:
        async with Runtime(APP, journal) as rt:
            await rt.ask("person", "ann", "change", {"email": "a"})
        await journal.key_store().forget("person", "ann")  # as if the process died right after this step
        async with Runtime(APP, journal) as rt:
            with pytest.raises(CommandError, match="forgotten"):
                await rt.ask("person", "ann", "get")
            assert [e.name for e in await journal.read("person", "ann")] == ["EmailChanged"]
            assert await rt.forget("person", "ann") is False  # it was forgotten: now the signal is there too
            assert [e.name for e in await journal.read("person", "ann")] == ["EmailChanged", "memoir.Forgotten"]


async def test_timers_of_an_encrypted_entity_stay_readable_beside_its_sealed_events() -> None:
    journal = MemoryJournal()
    async with Runtime(APP, journal) as rt:
        await rt.ask("person", "ann", "remind", {"email": f"ann-{MARKER}"})
        event, timer = await journal.read("person", "ann")
        assert is_sealed(event.payload) and MARKER.encode() not in event.payload
        assert timer.name == "memoir.TimerScheduled" and json.loads(timer.payload)["to_id"] == "n1"
    async with Runtime(APP, journal) as rt:  # recovery opens the event and skips the timer
        assert (await rt.ask("person", "ann", "get")).result.email == f"ann-{MARKER}"
