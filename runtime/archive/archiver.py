"""The archiver: moves events older than a snapshot and an age from the journal to the archive.

One pass (`Archiver.run_once`) scans the journal by position from its start: what is still
there and older than `after` seconds is either not yet covered by a snapshot (left alone) or
about to move, so the scan is short and needs no checkpoint of its own. For each entity with
a snapshot, its held events up to the snapshot (and up to `after` ago, and at or below every
guard checkpoint: the outbox publisher's, so nothing moves before it reached the event
streams) are written as segments, read back and compared event by event, then the manifests
and the pass's run file are written, the run is recorded in the journal (`memoir.archive.run`,
what `ArchivingJournal.read_all` checks), and only then does the journal drop them
(`Journal.delete(type, id, to_seq)`: keeps the snapshots, the command ids and the head).

A crash anywhere before the drop leaves the events in the journal and maybe in the archive
too; the next pass finds them archived already, compares them with the archive's copy, lists
their segments in its run file if no run lists them yet (a crash between the manifests and the
run file), and drops them. A JetStream journal is refused: its events *are* the streams views and consumers
follow, so dropping them there would drop them for a view that is not far enough behind to
catch up from the journal. `MEMOIR_ARCHIVE_FAULT=before-truncate` kills the process at that point (tests).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

import anyio
import msgspec
import structlog

from ..journal.base import Journal
from ..model.envelope import Envelope
from ..model.errors import ConfigError, JournalError
from .archive import Archive
from .journal import RUN_CHECKPOINT
from .segments import Manifest, Segment

log = structlog.get_logger("memoir.archive")

FAULT_ENV = "MEMOIR_ARCHIVE_FAULT"


class ArchiverSettings(msgspec.Struct, frozen=True, kw_only=True):
    after: float = 7 * 86400.0  # seconds: events younger than this stay in the journal
    interval: float = 300.0  # seconds between passes
    scan_page: int = 10_000  # events per journal read while scanning
    max_entities: int = 10_000  # entities moved per pass (the rest wait for the next)
    segment_events: int = 100_000  # events per segment file at most


class PassResult(msgspec.Struct, kw_only=True):
    entities: int = 0
    events: int = 0  # events dropped from the journal (now only in the archive)
    segments: int = 0
    run: int = 0


class Archiver:
    """Moves old events from `journal` (the bare one, not the archiving wrapper) to `archive`."""

    def __init__(
        self,
        journal: Journal,
        archive: Archive,
        settings: ArchiverSettings | None = None,
        *,
        guards: Sequence[str] = (),
    ) -> None:
        self.journal = journal
        self.archive = archive
        self.settings = settings or ArchiverSettings()
        self.guards = tuple(guards)  # checkpoint names: nothing above the lowest moves
        self.passes = 0
        self.moved = 0

    async def run(self) -> None:
        """Pass after pass until cancelled; a failed pass is logged and tried again next interval."""
        while True:
            try:
                await self.run_once()
            except (JournalError, OSError) as exc:
                log.warning("archive pass failed; next pass retries", archive=self.archive.url, error=str(exc))
            await anyio.sleep(self.settings.interval)

    async def _ceiling(self) -> int:
        ceiling = await self.journal.last_position()
        for name in self.guards:
            ceiling = min(ceiling, await self.journal.load_checkpoint(name))
        return ceiling

    async def _candidates(self, cutoff: int, ceiling: int) -> list[tuple[str, str]]:
        """Entities with held events older than the cutoff, in the order the journal has them."""
        found: dict[tuple[str, str], None] = {}
        position = 1
        while len(found) < self.settings.max_entities:
            page = await self.journal.read_all(position, self.settings.scan_page)
            if not page:
                break
            for env in page:
                if env.recorded_at > cutoff or env.position > ceiling:
                    return list(found)
                found[(env.entity_type, env.entity_id)] = None
            position = page[-1].position + 1
        return list(found)[: self.settings.max_entities]

    async def run_once(self, now: int | None = None) -> PassResult:
        """One pass; returns what moved."""
        cutoff = (time.time_ns() if now is None else now) - int(self.settings.after * 1e9)
        ceiling = await self._ceiling()
        drops: list[tuple[str, str, int, int]] = []  # (type, id, to_seq, events)
        written: list[Segment] = []
        manifests: list[Manifest] = []
        fresh = 0  # segment files written by this pass
        await self.archive.refresh()
        for entity_type, entity_id in await self._candidates(cutoff, ceiling):
            if self.journal.event_stream(entity_type) is not None:
                raise ConfigError(
                    f"the journal {self.journal.url} is its own event stream (nats://): deleting from it would"
                    " delete from the streams the views follow; archive a SQLite or PostgreSQL journal"
                )
            plan = await self._plan(entity_type, entity_id, cutoff, ceiling)
            if plan is None:
                continue
            manifest, take = plan
            new = [e for e in take if e.seq > manifest.to_seq]
            old = [e for e in take if e.seq <= manifest.to_seq]
            if old and await self.archive.read(entity_type, entity_id, old[0].seq, old[-1].seq) != old:
                log.error("journal and archive differ; left in the journal", entity=f"{entity_type}/{entity_id}")
                continue
            if old:  # archived by a pass cut short before its run file: this pass's run lists them
                written.extend(
                    s
                    for s in manifest.segments
                    if s.to_seq >= old[0].seq and s.from_seq <= old[-1].seq and not self.archive.indexed(s.path)
                )
            if new:
                if manifest.segments and new[0].seq != manifest.to_seq + 1:
                    log.error("seqs missing between the archive and the journal", entity=f"{entity_type}/{entity_id}")
                    continue
                step = self.settings.segment_events
                for i in range(0, len(new), step):
                    segment = await self.archive.write_segment(new[i : i + step])
                    manifest.segments.append(segment)
                    written.append(segment)
                    fresh += 1
                manifests.append(manifest)
            drops.append((entity_type, entity_id, take[-1].seq, len(take)))
        if not drops:
            return PassResult()
        for manifest in manifests:  # manifest-last: every file it names is written and checked
            await self.archive.save_manifest(manifest)
        run = await self.archive.save_run(written) if written else 0
        await self.archive.refresh()
        latest = max(run, self.archive.latest_run())
        if latest > await self.journal.load_checkpoint(RUN_CHECKPOINT):
            await self.journal.save_checkpoint(RUN_CHECKPOINT, latest)  # before any drop: readers look there
        if os.environ.get(FAULT_ENV) == "before-truncate":
            os.kill(os.getpid(), signal.SIGKILL)
        for entity_type, entity_id, to_seq, _ in drops:
            await self.journal.delete(entity_type, entity_id, to_seq)
        result = PassResult(entities=len(drops), events=sum(d[3] for d in drops), segments=fresh, run=latest)
        self.passes += 1
        self.moved += result.events
        log.info("archived", archive=self.archive.url, **msgspec.structs.asdict(result))
        return result

    async def _plan(
        self, entity_type: str, entity_id: str, cutoff: int, ceiling: int
    ) -> tuple[Manifest, list[Envelope]] | None:
        """The entity's manifest and the held events that may move, or None."""
        snapshot = await self.journal.load_snapshot(entity_type, entity_id)
        if snapshot is None:
            return None
        take: list[Envelope] = []
        for env in await self.journal.read(entity_type, entity_id, 1, snapshot.seq):
            if env.recorded_at > cutoff or env.position > ceiling:
                break
            take.append(env)
        if not take:
            return None
        return await self.archive.manifest(entity_type, entity_id), take
