"""The archiving journal over every backend: SQLite, PostgreSQL and memory archive, truncate, read
through and restore alike; a JetStream journal (its events are the streams views follow) is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.archive_data import ENTITIES, everything, fill
from support.journals import JournalFactory

from runtime.archive import Archive, Archiver, ArchiverSettings, ArchivingJournal
from runtime.model.errors import ConfigError

pytestmark = pytest.mark.anyio


async def test_archive_read_through_and_restore(journal_factory: JournalFactory, tmp_path: Path) -> None:
    archive = Archive(f"file://{tmp_path / 'archive'}")
    async with journal_factory.open() as bare:
        await fill(bare)
        archiver = Archiver(bare, archive, ArchiverSettings(after=86400))
        if journal_factory.backend.name == "nats":
            with pytest.raises(ConfigError, match="its own event stream"):
                await archiver.run_once()
            return
        before = {k: await bare.read(*k) for k in ENTITIES}
        before_all = await everything(bare)
        journal = ArchivingJournal(bare, archive)

        assert (await archiver.run_once()).events == 60

        for k in ENTITIES:
            assert [e.seq for e in await bare.read(*k)] == list(range(21, 31))
            assert await journal.read(*k) == before[k]
            assert await journal.read(*k, from_seq=7, to_seq=9) == before[k][6:9]
            assert (await journal.recover(*k)).events == before[k][20:]
        assert await everything(journal) == before_all

        for k in ENTITIES:
            assert await journal.restore(*k) == 20
            assert await bare.read(*k) == before[k]
        assert await everything(bare) == before_all
