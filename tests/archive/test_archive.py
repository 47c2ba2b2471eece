"""Tiered storage with real parts: a SQLite journal, and an archive in a local directory or in S3 (moto).

Each case archives, truncates and then reads the way the CLI and the views do: equal to before.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.archive_data import ENTITIES, everything, fill
from support.object_stores import moto_endpoint, s3_bucket

from runtime.archive import Archive, Archiver, ArchiverSettings, ArchivingJournal
from runtime.archive.segments import Segment
from runtime.journal import SqliteJournal
from runtime.model.errors import ConfigError, JournalError, Unavailable

pytestmark = pytest.mark.anyio
__all__ = ["moto_endpoint"]  # the session fixture, imported so pytest finds it here


@pytest.fixture(params=["file", "s3"])
async def archive_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'archive'}"
    endpoint = request.getfixturevalue("moto_endpoint")
    return f"s3://{s3_bucket(endpoint, monkeypatch)}/memoir"


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    async with SqliteJournal.from_url(f"sqlite:///{tmp_path / 'journal.db'}") as j:
        yield j


async def test_archive_then_truncate_reads_equal_before(journal: SqliteJournal, archive_url: str) -> None:
    await fill(journal)
    before_all = await everything(journal)
    before = {k: await journal.read(*k) for k in ENTITIES}
    archive = Archive(archive_url)
    reading = ArchivingJournal(journal, archive)

    moved = await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()

    assert (moved.entities, moved.events, moved.segments) == (3, 60, 3)  # up to the snapshot (20), all old
    for k in ENTITIES:
        assert [e.seq for e in await journal.read(*k)] == list(range(21, 31))  # the journal dropped 1..20
        assert await reading.read(*k) == before[k]  # memoir events
        assert await reading.read(*k, from_seq=5, to_seq=22) == before[k][4:22]  # memoir state --seq 22
        assert await reading.read(*k, from_seq=3, limit=4) == before[k][2:6]
        assert await reading.read(*k, from_seq=21) == before[k][20:]
        rec = await reading.recover(*k)  # an activation: snapshot + the events after it, no archive needed
        assert rec.snapshot is not None and rec.snapshot.seq == 20 and rec.events == before[k][20:]
        assert await journal.head(*k) == 30
    assert await everything(reading) == before_all  # a new view's catch-up, memoir replay, export
    assert len(await everything(journal)) == len(before_all) - 60

    again = await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()
    assert again.events == 0  # nothing left older than the snapshot
    checked, problems = await archive.verify()
    assert (checked, problems) == (3, [])
    status = await archive.status()
    assert (status.entities, status.segments, status.events) == (3, 3, 60)


async def test_a_reader_in_another_process_sees_a_later_pass(journal: SqliteJournal, archive_url: str) -> None:
    """A reader whose archive loaded its runs before a pass finds the moved events through the run checkpoint."""
    await fill(journal)
    before_all = await everything(journal)
    reader = ArchivingJournal(journal, Archive(archive_url))
    assert await everything(reader) == before_all
    await Archiver(journal, Archive(archive_url), ArchiverSettings(after=86400)).run_once()
    assert await everything(reader) == before_all


async def test_only_old_events_below_the_guard_move(journal: SqliteJournal, tmp_path: Path) -> None:
    await fill(journal)
    await journal.save_checkpoint("memoir.publisher", 30)  # the outbox published ten events per entity
    archive = Archive(f"file://{tmp_path / 'a'}")
    moved = await Archiver(journal, archive, ArchiverSettings(after=86400), guards=["memoir.publisher"]).run_once()
    assert moved.events == 30
    assert max(s.last_position for m in await archive.manifests() for s in m.segments) <= 30
    young = await Archiver(journal, archive, ArchiverSettings(after=40 * 86400)).run_once()
    assert young.events == 0  # nothing is 40 days old


async def test_verify_finds_a_corrupted_segment(journal: SqliteJournal, archive_url: str) -> None:
    await fill(journal)
    archive = Archive(archive_url)
    await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()
    victim = (await archive.manifest("inventory", "XYZ-1")).segments[0].path
    stored = await archive.store.get(victim)
    assert stored is not None
    await archive.store.put(victim, gzip.compress(gzip.decompress(stored).replace(b'"units":3,', b'"units":4,')))

    checked, problems = await Archive(archive_url).verify()

    assert checked == 3
    assert [p.path for p in problems] == [victim]
    assert "sha256" in problems[0].error
    with pytest.raises(JournalError, match="does not match its sha256"):
        await ArchivingJournal(journal, Archive(archive_url)).read("inventory", "XYZ-1")  # never served as history


async def test_restore_puts_the_events_back(journal: SqliteJournal, archive_url: str) -> None:
    await fill(journal)
    before_all = await everything(journal)
    archive = Archive(archive_url)
    reading = ArchivingJournal(journal, archive)
    await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()

    assert await reading.restore("inventory", "XYZ-1") == 20

    assert await journal.read("inventory", "XYZ-1") == [e for e in before_all if e.entity_id == "XYZ-1"]
    assert await everything(reading) == before_all
    again = await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()
    assert (again.events, again.segments) == (20, 0)  # archived already: compared, then dropped again
    assert await everything(reading) == before_all


async def test_a_pass_cut_short_before_its_run_file_is_indexed_by_the_next(
    journal: SqliteJournal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifests written, the run file not (the store failed): the next pass lists those segments."""
    await fill(journal)
    before_all = await everything(journal)
    url = f"file://{tmp_path / 'a'}"

    async def fails(self: Archive, segments: list[Segment]) -> int:
        raise Unavailable("archive unavailable", "the store went away")

    with monkeypatch.context() as m:
        m.setattr(Archive, "save_run", fails)
        with pytest.raises(Unavailable):
            await Archiver(journal, Archive(url), ArchiverSettings(after=86400)).run_once()
    assert await everything(journal) == before_all  # nothing dropped
    checked, problems = await Archive(url).verify()
    assert checked == 3 and all("no run file lists it" in p.error for p in problems) and len(problems) == 3

    again = await Archiver(journal, Archive(url), ArchiverSettings(after=86400)).run_once()

    assert (again.events, again.segments) == (60, 0)
    assert await everything(ArchivingJournal(journal, Archive(url))) == before_all
    assert await Archive(url).verify() == (3, [])


async def test_a_tombstone_deletes_the_archived_segments(journal: SqliteJournal, tmp_path: Path) -> None:
    await fill(journal)
    before_all = await everything(journal)
    url = f"file://{tmp_path / 'a'}"
    archive = Archive(url)
    reading = ArchivingJournal(journal, archive)
    await Archiver(journal, archive, ArchiverSettings(after=86400)).run_once()
    elsewhere = ArchivingJournal(journal, Archive(url))
    assert await everything(elsewhere) == before_all  # another reader, its runs loaded before the delete

    await reading.delete("cart", "C1")

    assert await reading.read("cart", "C1") == []
    assert not list((tmp_path / "a" / "segments" / "cart").glob("*/*"))
    rest = [e for e in before_all if e.entity_type != "cart"]
    assert await everything(reading) == rest
    assert await everything(elsewhere) == rest  # skips the segment it finds gone with its manifest
    assert await everything(ArchivingJournal(journal, Archive(url))) == rest  # the run files no longer list it
    assert await Archive(url).verify() == (2, [])


@pytest.mark.parametrize(
    ("url", "names"),
    [("ftp://host/x", "ftp://host/x"), ("s3://", "s3:"), ("nowhere", "nowhere")],
)
def test_a_bad_archive_url_is_named(url: str, names: str) -> None:
    with pytest.raises(ConfigError, match=f"archive URL '{names}'"):
        Archive(url)


async def test_two_passes_never_share_a_run_number(archive_url: str) -> None:
    """Run files are created with a conditional put: a number another process took is not overwritten."""
    first, second = Archive(archive_url), Archive(archive_url)
    assert await first.save_run([]) == 1
    assert await second.store.create("runs/00000000000000000001.json", b"{}") is False  # taken
    assert await second.save_run([]) == 2
    assert await first.save_run([]) == 3
