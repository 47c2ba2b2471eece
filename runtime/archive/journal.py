"""`ArchivingJournal`: any journal, with reads that fall through to the archive for what it moved.

Wrapping is all a reader needs: `memoir events`, `memoir state --seq` (time travel), a view's
catch-up and `memoir replay` ask the journal as before and get the whole history.

- `read(type, id, from_seq, to_seq)`: the journal first; only when it starts above `from_seq`
  (the seqs below were moved) does the archive serve the gap. A current entity's reads, and
  recovery (a snapshot and the events after it: archived events are older than a snapshot),
  never touch the archive.
- `read_all(from_position)`: the journal's page, merged with archived events of the same
  positions range. The archiver records each pass as the checkpoint `memoir.archive.run` in the
  journal *before* it deletes anything, and the read loads it *after* reading the journal: an
  event it no longer found in the journal is then already in a run it knows. Costs one
  checkpoint load per page.
- `delete(type, id)` (a tombstone) deletes the entity's segments too, and moves the run
  checkpoint so readers elsewhere drop them from what they loaded.
  `delete(type, id, to_seq)` drops the journal's copy only: archived events stay readable (it is
  how the archiver, which holds the bare journal, drops what it moved). Writes, snapshots and
  checkpoints go to the journal unchanged: archived events keep their seqs and positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import anyio

from ..journal.base import Journal
from ..journal.keys import KeyStore
from ..model.envelope import Envelope, Recovery, Snapshot
from ..model.errors import JournalError
from .archive import Archive

RUN_CHECKPOINT = "memoir.archive.run"  # the last archiving pass whose files are complete


class Restorable(Protocol):
    """A journal that can take events back at their own seqs and positions (`memoir archive restore`)."""

    async def restore_events(self, events: Sequence[Envelope]) -> int: ...


class ArchivingJournal(Journal):
    """A journal whose reads fall through to an archive for the events moved there."""

    def __init__(self, inner: Journal, archive: Archive) -> None:
        self.inner = inner
        self.archive = archive
        self.url = inner.url
        self.prefix = inner.prefix
        self._run = 0

    def __getattr__(self, name: str) -> Any:  # a backend's own extras (the group-commit stats)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def next_append(self) -> anyio.Event:
        return self.inner.next_append()

    def hears_others(self) -> bool:  # a backend that hears other processes' appends still does
        hears = getattr(self.inner, "hears_others", None)
        return bool(hears()) if hears is not None else False

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    # -- reads that fall through ------------------------------------------------------------------

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        held = await self.inner.read(entity_type, entity_id, from_seq, to_seq, limit)
        if held and held[0].seq <= from_seq:
            return held
        if held:
            gap_to = held[0].seq - 1
        else:
            head = await self.inner.head(entity_type, entity_id)
            gap_to = head if to_seq is None else min(to_seq, head)
            if from_seq > gap_to or await self.inner.is_deleted(entity_type, entity_id):
                return held
        archived = await self.archive.read(entity_type, entity_id, from_seq, gap_to)
        out = archived + held
        return out if limit is None else out[:limit]

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        rec = await self.inner.recover(entity_type, entity_id)
        start = rec.snapshot.seq + 1 if rec.snapshot is not None else 1
        missing = (rec.events[0].seq > start) if rec.events else (rec.head >= start and not rec.deleted)
        if not missing:
            return rec
        gap_to = rec.events[0].seq - 1 if rec.events else rec.head
        archived = await self.archive.read(entity_type, entity_id, start, gap_to)
        return Recovery(rec.snapshot, archived + rec.events, rec.head, rec.deleted)

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        page = await self.inner.read_all(from_position, limit)
        run = await self.inner.load_checkpoint(RUN_CHECKPOINT)  # after the read: see the docstring
        if run > self._run:
            await self.archive.refresh()
            self._run = run
        if run == 0:
            return page
        high = page[-1].position if page else None
        archived = await self.archive.read_positions(from_position, high, limit)
        if not archived:
            return page
        merged = {e.position: e for e in archived}
        merged.update((e.position, e) for e in page)
        return [merged[p] for p in sorted(merged)[:limit]]

    # -- everything else: the journal's -----------------------------------------------------------

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        return await self.inner.append(events, expected_seq)

    async def head(self, entity_type: str, entity_id: str) -> int:
        return await self.inner.head(entity_type, entity_id)

    async def last_position(self) -> int:
        return await self.inner.last_position()

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        await self.inner.delete(entity_type, entity_id, to_seq)
        if to_seq is None and (run := await self.archive.forget(entity_type, entity_id)):
            seen = await self.inner.load_checkpoint(RUN_CHECKPOINT)
            await self.inner.save_checkpoint(RUN_CHECKPOINT, max(run, seen))

    async def find_command(self, entity_type: str, entity_id: str, command_id: str) -> tuple[int, bytes | None] | None:
        return await self.inner.find_command(entity_type, entity_id, command_id)

    def event_stream(self, entity_type: str) -> str | None:
        return self.inner.event_stream(entity_type)

    def key_store(self) -> KeyStore:
        return self.inner.key_store()

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self.inner.save_snapshot(snapshot)

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        return await self.inner.load_snapshot(entity_type, entity_id, max_seq)

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        await self.inner.delete_snapshots(entity_type, entity_id, to_seq)

    async def load_checkpoint(self, name: str) -> int:
        return await self.inner.load_checkpoint(name)

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self.inner.save_checkpoint(name, position)

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return await self.inner.is_deleted(entity_type, entity_id)

    # -- restore ----------------------------------------------------------------------------------

    async def restore(self, entity_type: str, entity_id: str) -> int:
        """Put an entity's archived events the journal no longer holds back into it; returns how many."""
        restore = getattr(self.inner, "restore_events", None)
        if restore is None:
            raise JournalError(
                f"{type(self.inner).__name__} cannot take events back at their old positions:"
                " restore needs a SQLite, PostgreSQL or memory journal"
            )
        held = await self.inner.read(entity_type, entity_id, 1, limit=1)
        below = held[0].seq - 1 if held else await self.inner.head(entity_type, entity_id)
        archived = await self.archive.read(entity_type, entity_id, 1, below)
        if not archived:
            return 0
        return int(await restore(archived))
