"""An encrypted entity's archived events stay ciphertext, and forgetting the entity reaches them: the
archive holds no plaintext before, and nothing readable after."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from crypto.people import MARKER, Person, app
from support.waiting import eventually

from runtime import Runtime, SqliteJournal, model_of, state_at
from runtime.archive import Archive, Archiver, ArchiverSettings, ArchivingJournal
from runtime.model.errors import EntityForgotten
from runtime.model.sealing import is_sealed

pytestmark = pytest.mark.anyio


def archived_bytes(root: Path) -> bytes:
    return b"".join(gzip.decompress(f.read_bytes()) for f in sorted((root / "segments").rglob("*.jsonl.gz")))


async def test_sealed_in_the_archive_and_forgotten_there_too(tmp_path: Path) -> None:
    archive = Archive(f"file://{tmp_path / 'archive'}")
    async with ArchivingJournal(SqliteJournal(tmp_path / "j.db"), archive) as journal, Runtime(app, journal) as rt:
        for n in range(4):  # a snapshot at 3
            await rt.ask("person", "ann", "change", {"email": f"ann{n}-{MARKER}@x"})

        async def snapshot_stored() -> bool:  # the runtime stores snapshots from a task of its own
            return await journal.load_snapshot("person", "ann") is not None

        await eventually(snapshot_stored, what="the snapshot at seq 3 stored")
        moved = await Archiver(journal.inner, archive, ArchiverSettings(after=0)).run_once()
        assert moved.events == 3
        assert b'"sealed"' in archived_bytes(tmp_path / "archive")
        assert MARKER.encode() not in archived_bytes(tmp_path / "archive")
        assert all(is_sealed(e.payload) for e in await journal.read("person", "ann", 1, 3))
        state, _ = await state_at(journal, model_of(Person), "ann", seq=2, keys=rt.keys)
        assert state.email == f"ann1-{MARKER}@x"  # time travel through the archive, decrypted

        await rt.forget("person", "ann")

        with pytest.raises(EntityForgotten):
            await state_at(journal, model_of(Person), "ann", seq=2, keys=rt.keys)
