"""What is on disk: ciphertext only, keys erased from the SQLite file and its WAL, tampering named, upcasting intact."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import msgspec
import pytest

from runtime import (
    ConfigError,
    Effect,
    Envelope,
    EventSourcedEntity,
    MemoryJournal,
    Runtime,
    SealError,
    SqliteJournal,
    applies,
    command,
    event,
    history,
    model_of,
)
from runtime.engine.keyring import KeyRing, open_envelope, parse_master_key, seal_envelope
from runtime.model.sealing import new_key

from .people import MARKER, Note, Person

pytestmark = pytest.mark.anyio

APP = [Person, Note]


def _disk(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


async def test_sqlite_files_hold_ciphertext_and_lose_the_key_on_forget(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with SqliteJournal(db) as journal, Runtime(APP, journal) as rt:
        for i in range(4):
            await rt.ask("person", "ann", "change", {"email": f"ann{i}-{MARKER}"})
        await rt.ask("person", "bob", "change", {"email": f"bob-{MARKER}"})
        entry = await journal.key_store().get("person", "ann")
        assert entry is not None and entry.material is not None
        material = entry.material
        assert MARKER.encode() not in _disk(db)
        assert material in _disk(db)  # the test can see a key where there is one

        await rt.forget("person", "ann")
        on_disk = _disk(db)
        assert material not in on_disk and material[1:] not in on_disk  # not in a page, free space or WAL frame
        bob = await journal.key_store().get("person", "bob")
        assert bob is not None and bob.material is not None and bob.material in on_disk


async def test_a_tampered_or_moved_payload_is_a_clear_error_naming_the_event(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with SqliteJournal(db) as journal, Runtime(APP, journal) as rt:
        for i in range(2):
            await rt.ask("person", "ann", "change", {"email": f"a{i}"})
        await rt.ask("person", "bob", "change", {"email": "b"})
    with sqlite3.connect(db) as conn:  # flip one ciphertext bit of ann's seq 2
        (payload,) = conn.execute(
            "SELECT payload FROM events e JOIN streams s ON s.id=e.stream WHERE s.entity_id='ann' AND e.seq=2"
        ).fetchone()
        bad = payload[:-1] + bytes([payload[-1] ^ 1])
        conn.execute("UPDATE events SET payload=? WHERE position=2", (bad,))
    async with SqliteJournal(db) as journal, Runtime(APP, journal) as rt:
        with pytest.raises(Exception, match=r"event person/ann/2 \(EmailChanged\).*integrity") as err:
            await rt.ask("person", "ann", "get")
        assert getattr(err.value, "code", None) == "internal"
        assert (await rt.ask("person", "bob", "get")).result.email == "b"  # the runtime keeps serving
        assert await rt.forget("person", "ann")  # an entity whose events no longer open can still be forgotten

    with sqlite3.connect(db) as conn:  # a valid ciphertext moved to another event fails too
        (first,) = conn.execute("SELECT payload FROM events WHERE position=3").fetchone()  # bob/1
        conn.execute(
            "INSERT INTO events (position, stream, seq, name, version, recorded_at, payload)"
            " SELECT 100, stream, 2, name, version, recorded_at, ? FROM events WHERE position=3",
            (first,),
        )
    async with SqliteJournal(db) as journal, Runtime(APP, journal) as rt:
        with pytest.raises(Exception, match=r"event person/bob/2 .*tampered or moved"):
            await rt.ask("person", "bob", "get")


@event(name="Renamed")  # version 1, as an older release wrote it
class RenamedV1(msgspec.Struct):
    name: str


@event(name="Renamed", version=2, upcasters={1: lambda old: {"first": old["name"], "last": "?"}})
class RenamedV2(msgspec.Struct):
    first: str
    last: str


class DocV1(EventSourcedEntity[str], name="doc", encrypted=True):
    initial = ""

    @command
    def rename(self, s: str, name: str) -> Effect[str]:
        return self.persist(RenamedV1(name)).reply(lambda s: s)

    @applies
    def renamed(self, s: str, e: RenamedV1) -> str:
        return e.name


class DocV2(EventSourcedEntity[str], name="doc", encrypted=True):
    initial = ""

    @applies
    def renamed(self, s: str, e: RenamedV2) -> str:
        return f"{e.first} {e.last}"


async def test_encrypted_v1_events_are_opened_then_upcast_by_a_v2_class() -> None:
    journal = MemoryJournal()
    async with Runtime([DocV1], journal) as rt:
        await rt.ask("doc", "d", "rename", {"name": "Ada"})
    (stored,) = await journal.read("doc", "d")
    assert stored.version == 1 and b"Ada" not in stored.payload
    keys = KeyRing(journal.key_store())
    items = [item async for item in history(journal, model_of(DocV2), "d", keys=keys)]
    assert [i.state for i in items] == ["Ada ?"]


async def test_a_master_key_wraps_the_data_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = new_key()
    monkeypatch.setenv("MEMOIR_MASTER_KEY", base64.b64encode(master).decode())
    db = tmp_path / "journal.db"
    async with SqliteJournal(db) as journal:
        async with Runtime(APP, journal) as rt:
            await rt.ask("person", "ann", "change", {"email": "a"})
        entry = await journal.key_store().get("person", "ann")
        assert entry is not None and entry.material is not None and entry.material[:1] == b"\x01"
        (env,) = await journal.read("person", "ann")
        assert await KeyRing(journal.key_store(), master).open(env) is not None
        with pytest.raises(SealError, match="wrapped by a master key: set MEMOIR_MASTER_KEY"):
            await KeyRing(journal.key_store()).open(env)
        with pytest.raises(SealError, match="wrong MEMOIR_MASTER_KEY"):
            await KeyRing(journal.key_store(), new_key()).open(env)

    for bad, words in [("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "decodes to 5 bytes")]:
        with pytest.raises(ConfigError, match=words) as err:
            parse_master_key(bad)
        assert bad not in str(err.value)  # a secret is never echoed
    monkeypatch.setenv("MEMOIR_MASTER_KEY", "nope!")
    with pytest.raises(ConfigError, match="MEMOIR_MASTER_KEY is not base64"):
        Runtime(APP, MemoryJournal())
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.urlsafe_b64encode(master).decode() + "\n")
    monkeypatch.setenv("MEMOIR_MASTER_KEY_FILE", str(key_file))  # the file wins over the variable
    assert Runtime(APP, MemoryJournal()).keys is not None


def test_a_sealed_envelope_is_bound_to_its_place() -> None:
    key = new_key()
    env = Envelope(
        entity_type="person",
        entity_id="ann",
        seq=1,
        name="EmailChanged",
        version=1,
        payload=b'{"email":"x"}',
        recorded_at=1,
        reply=b'"ok"',
    )
    sealed = seal_envelope(key, env)
    assert open_envelope(key, sealed) == env
    assert seal_envelope(key, env).payload != sealed.payload  # a fresh nonce each time
    for moved in (
        msgspec.structs.replace(sealed, seq=2),
        msgspec.structs.replace(sealed, entity_id="bob"),
        msgspec.structs.replace(sealed, name="Erased"),
        msgspec.structs.replace(sealed, version=2),
    ):
        with pytest.raises(SealError, match="tampered or moved"):
            open_envelope(key, moved)
    with pytest.raises(SealError, match="integrity"):
        open_envelope(new_key(), sealed)
    with pytest.raises(SealError, match="not a sealed payload"):
        open_envelope(key, msgspec.structs.replace(sealed, payload=b"\x00\x01short"))
    with pytest.raises(SealError, match="format 9"):
        open_envelope(key, msgspec.structs.replace(sealed, payload=b"\x00\x09" + sealed.payload[2:]))
    with pytest.raises(SealError, match="has no data key"):
        open_envelope(None, sealed)
