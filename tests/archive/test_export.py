"""The continuous export: every event of the journal, archived ones included, in exactly one file, in
position order, across rounds and across a crash between a file and its checkpoint."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import msgspec
import pytest
from support.archive_data import event, everything, fill

from runtime import SqliteJournal
from runtime.archive import Archive, Archiver, ArchiverSettings, ArchivingJournal, Exporter
from runtime.archive.export import CHECKPOINT

pytestmark = pytest.mark.anyio


def lines(root: Path) -> list[dict[str, object]]:
    return [
        msgspec.json.decode(line)
        for f in sorted((root / "export").rglob("*.jsonl.gz"))
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]


async def test_export_writes_every_event_once(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        await fill(journal)
        archive = Archive(f"file://{tmp_path / 'a'}")
        reading = ArchivingJournal(journal, archive)
        await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()
        exporter = Exporter(reading, archive, page=40)
        assert await exporter.run_once() == 90
        await journal.append([event("cart", "C1", 31, time.time_ns())], 30)
        assert await exporter.run_once() == 1
        assert await exporter.run_once() == 0

        exported = lines(tmp_path / "a")
        assert [x["position"] for x in exported] == [e.position for e in await everything(reading)]
        assert exported[0]["payload"] == {"units": 1, "id": "XYZ-1"}  # the event's own JSON, for analytics


async def test_a_file_written_before_a_crash_is_adopted_not_duplicated(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        await fill(journal)
        archive = Archive(f"file://{tmp_path / 'a'}")
        assert await Exporter(journal, archive, page=40).run_once() == 90
        await journal.save_checkpoint(CHECKPOINT, 80)  # the crash: the last file's checkpoint lost
        await journal.append([event("cart", "C1", 31, time.time_ns())], 30)

        assert await Exporter(journal, archive, page=1000).run_once() == 1  # adopts 81..90, then writes 91

        assert [x["position"] for x in lines(tmp_path / "a")] == list(range(1, 92))
        assert len(list((tmp_path / "a" / "export").rglob("*.jsonl.gz"))) == 4
