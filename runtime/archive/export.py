"""The continuous export (the seed article's Firehose): the journal, in position order, as files.

`Exporter` writes every event, archived or not, to `export/{first:020d}-{last:020d}.jsonl.gz` in
the archive's store, the same line format as the segments, a file per page, and keeps its place
as the checkpoint `memoir.archive.export` in the journal. A crash between a file and its
checkpoint leaves a file starting at the checkpoint's next position; the next page adopts it
instead of writing an overlapping one, so each event is in exactly one export file.
"""

from __future__ import annotations

import anyio
import structlog

from ..journal.base import Journal
from . import segments as fmt
from .archive import Archive

log = structlog.get_logger("memoir.archive")

CHECKPOINT = "memoir.archive.export"
POLL = 60.0  # seconds between files when following: fewer, larger files for analytics


def export_path(first: int, last: int) -> str:
    return f"export/{first:020d}-{last:020d}{fmt.SUFFIX}"


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
        while True:
            first = position + 1
            existing = await self.archive.store.list(f"export/{first:020d}-")
            if existing:  # written before a crash, its checkpoint not: adopt it
                last = int(existing[0][0].rsplit("-", 1)[1].split(".", 1)[0])
            else:
                events = await self.journal.read_all(first, self.page)
                if not events:
                    return written
                last = events[-1].position
                await self.archive.store.put(export_path(first, last), fmt.encode(events))
                written += len(events)
                self.files += 1
                self.events += len(events)
            await self.journal.save_checkpoint(CHECKPOINT, last)
            position = last

    async def follow(self, interval: float = POLL) -> None:
        """Export as events arrive, a file per `interval` at most, until cancelled."""
        while True:
            await self.run_once()
            await anyio.sleep(interval)
