"""The continuous export (the seed article's Firehose): the journal, in position order, as files.

`Exporter` writes every event, archived or not, to `export/{day}/{first:020d}-{last:020d}.jsonl.gz`
in the archive's store (the day, UTC, of the file's first event: the partitions analytics tools
expect), the same line format as the segments, a file per page, and keeps its place as the
checkpoint `memoir.archive.export` in the journal. A crash between a file and its checkpoint
leaves a file starting at the checkpoint's next position; the next round finds it in its day's
folder and adopts it instead of writing an overlapping one: each event is in exactly one file.
"""

from __future__ import annotations

import datetime as dt

import anyio
import structlog

from ..journal.base import Journal
from . import segments as fmt
from .archive import Archive

log = structlog.get_logger("memoir.archive")

CHECKPOINT = "memoir.archive.export"
POLL = 60.0  # seconds between files when following: fewer, larger files for analytics


def export_path(day: str, first: int, last: int) -> str:
    return f"export/{day}/{first:020d}-{last:020d}{fmt.SUFFIX}"


def _day(recorded_at: int) -> str:
    return dt.datetime.fromtimestamp(recorded_at / 1e9, tz=dt.UTC).strftime("%Y-%m-%d")


class Exporter:
    """Writes the journal (an `ArchivingJournal`, so archived events too) to position-ordered files."""

    def __init__(self, journal: Journal, archive: Archive, *, page: int = 10_000) -> None:
        self.journal = journal
        self.archive = archive
        self.page = page
        self.files = 0
        self.events = 0

    async def run_once(self) -> int:
        """Export everything appended since the checkpoint; returns how many events were written."""
        written = 0
        position = await self.journal.load_checkpoint(CHECKPOINT)
        resumed = True  # only the round's first file can have been written before a crash
        while events := await self.journal.read_all(position + 1, self.page):
            first, day = position + 1, _day(events[0].recorded_at)
            found = await self._written(day, first) if resumed else None
            resumed = False
            if found is not None:  # written before a crash, its checkpoint not: adopt it
                last = found
            else:
                last = events[-1].position
                await self.archive.store.put(export_path(day, first, last), fmt.encode(events))
                written += len(events)
                self.files += 1
                self.events += len(events)
            await self.journal.save_checkpoint(CHECKPOINT, last)
            position = last
        return written

    async def _written(self, day: str, first: int) -> int | None:
        """The last position of a file of `day` starting at `first`, if there is one."""
        name = f"{first:020d}-"
        for path, _ in await self.archive.store.list(f"export/{day}/"):
            if path.rsplit("/", 1)[-1].startswith(name):
                return int(path.rsplit("-", 1)[1].split(".", 1)[0])
        return None

    async def follow(self, interval: float = POLL) -> None:
        """Export as events arrive, a round of files per `interval`, until cancelled."""
        while True:
            await self.run_once()
            await anyio.sleep(interval)
