"""A crash between the archive's files and the journal's truncation, in a local directory and in S3 (moto):
the archiving process is killed (SIGKILL) at that point; nothing is lost, reads are whole, and the next pass
finishes the move."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.archive_data import ENTITIES, everything, fill
from support.object_stores import moto_endpoint, s3_bucket
from support.process import MEMOIR, ROOT

from runtime import SqliteJournal
from runtime.archive import FAULT_ENV, RUN_CHECKPOINT, Archive, Archiver, ArchiverSettings, ArchivingJournal

pytestmark = pytest.mark.anyio
__all__ = ["moto_endpoint"]  # the session fixture, imported so pytest finds it here


@pytest.fixture(params=["file", "s3"])
async def archive_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'archive'}"
    return f"s3://{s3_bucket(request.getfixturevalue('moto_endpoint'), monkeypatch)}/memoir"


async def test_killed_between_archive_and_truncation(tmp_path: Path, archive_url: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    async with SqliteJournal(data / "journal.db") as journal:
        await fill(journal)
        before = await everything(journal)

    killed = subprocess.run(
        [*MEMOIR, "archive", "run", "--after", "86400", "--data-dir", str(data), "--archive-url", archive_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "before-truncate"},
    )

    assert killed.returncode == -9, killed.stderr
    async with SqliteJournal(data / "journal.db") as journal:
        assert await everything(journal) == before  # the journal dropped nothing
        assert await journal.load_checkpoint(RUN_CHECKPOINT) == 1  # the run was recorded before any drop
        archive = Archive(archive_url)
        assert (await archive.status()).events == 60  # and the archive holds them
        reading = ArchivingJournal(journal, archive)
        assert await everything(reading) == before  # both copies, each event once

        again = await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()

        assert (again.events, again.segments) == (60, 0)  # compared with the archive's copy, then dropped
        assert len(await everything(journal)) == len(before) - 60
        assert await everything(reading) == before
        for k in ENTITIES:
            assert await reading.read(*k) == [e for e in before if (e.entity_type, e.entity_id) == k]
        assert await archive.verify() == (3, [])
