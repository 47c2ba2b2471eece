"""An archive: old events in an object store, per entity segment, found by seq or by position.

Writes are manifest-last: segments first, each read back and checked (sha256, count, every
event equal to what the journal holds) before the entity's manifest names it, and the run file
(the index by position) after the manifests. A crash at any point leaves either files no
manifest names (harmless, rewritten byte for byte next time) or a complete archive entry.
Reads by seq follow one entity's manifest; reads by position use the run files, loaded once
and refreshed when the journal says a newer run exists (`ArchivingJournal`).
"""

from __future__ import annotations

import bisect
import collections
import heapq
import sys
import time
from collections.abc import Iterable, Sequence

import msgspec

from ..model.envelope import Envelope
from ..model.errors import JournalError
from . import segments as fmt
from ._store import ObjectStore
from .segments import Manifest, Run, Segment

CACHE_EVENTS = 500_000  # decoded events kept: a catch-up by position reads each segment again once it is evicted


class Problem(msgspec.Struct, frozen=True):
    """Something `verify` found wrong with one segment."""

    path: str
    error: str


class Status(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    entities: int
    segments: int
    events: int
    bytes: int
    runs: int


class Archive:
    """Segments, manifests and run files under one object-store URL."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create=False` for a reader: a local directory that is not there is an error, not made."""
        self.store = ObjectStore(url, create=create)
        self.url = self.store.where
        self._runs: dict[int, list[Segment]] = {}
        self._cache: collections.OrderedDict[str, list[Envelope]] = collections.OrderedDict()
        self._positions: dict[str, list[int]] = {}  # each cached segment's positions, for bisection
        self._cached = 0

    # -- writing -------------------------------------------------------------------------------

    async def write_segment(self, events: Sequence[Envelope]) -> Segment:
        """Write one entity's consecutive events, read the file back and check it; returns its entry."""
        first, last = events[0], events[-1]
        path = fmt.segment_path(first.entity_type, first.entity_id, first.seq, last.seq)
        data = fmt.encode(events)
        segment = fmt.describe(path, events, data, time.time_ns())
        await self.store.put(path, data)
        back = await self._load(segment)
        if back != list(events):
            raise JournalError(f"archive {self.url}: {path} read back differs from the journal's events")
        return segment

    async def manifest(self, entity_type: str, entity_id: str) -> Manifest:
        raw = await self.store.get(fmt.manifest_path(entity_type, entity_id))
        if raw is None:
            return Manifest(entity_type=entity_type, entity_id=entity_id)
        try:
            return msgspec.json.decode(raw, type=Manifest)
        except msgspec.DecodeError as exc:
            raise JournalError(f"archive {self.url}: manifest of {entity_type}/{entity_id} is damaged: {exc}") from None

    async def save_manifest(self, manifest: Manifest) -> None:
        await self.store.put(fmt.manifest_path(manifest.entity_type, manifest.entity_id), msgspec.json.encode(manifest))

    async def save_run(self, segments: list[Segment], forgotten: Sequence[str] = ()) -> int:
        """Record a pass's segments (after their manifests), or a tombstone's deleted segments, in
        the next run file; returns its number."""
        for _ in range(100):  # another process may take the same number: a conditional put tells
            await self.refresh()
            number = max(self._runs, default=0) + 1
            run = Run(number=number, segments=segments, forgotten=list(forgotten))
            if await self.store.create(fmt.run_path(number), msgspec.json.encode(run)):
                self._apply(run)
                return number
        raise JournalError(f"archive {self.url}: no free run number after 100 tries")

    def _apply(self, run: Run) -> None:
        if run.forgotten:
            gone = set(run.forgotten)
            for n, listed in self._runs.items():
                self._runs[n] = [s for s in listed if s.path not in gone]
            for path in gone:
                self._drop(path)
        self._runs[run.number] = run.segments

    async def forget(self, entity_type: str, entity_id: str) -> int:
        """Delete an entity's archive (a tombstone reaches it too); returns the run that records it (0: none).

        The manifest goes first (reads by seq stop), then a run file names the deleted segments
        (readers in other processes drop them when the journal's run checkpoint moves), the older
        run files are rewritten without them, and the files go last. A reader that meets a missing
        segment its manifest no longer names skips it (`read_positions`).
        """
        manifest = await self.manifest(entity_type, entity_id)
        if not manifest.segments:
            return 0
        gone = [s.path for s in manifest.segments]
        await self.store.delete(fmt.manifest_path(entity_type, entity_id))
        number = await self.save_run([], forgotten=gone)
        for n, listed in list(self._runs.items()):
            raw = await self.store.get(fmt.run_path(n)) if n != number else None
            if raw is not None and len(msgspec.json.decode(raw, type=Run).segments) != len(listed):
                await self.store.put(fmt.run_path(n), msgspec.json.encode(Run(number=n, segments=listed)))
        for path in gone:
            await self.store.delete(path)
        return number

    # -- reading ---------------------------------------------------------------------------------

    async def _load(self, segment: Segment) -> list[Envelope]:
        """A segment's events, checked against its entry (sha256 and count)."""
        cached = self._cache.get(segment.path)
        if cached is not None:
            self._cache.move_to_end(segment.path)
            return cached
        data = await self.store.get(segment.path)
        if data is None:
            raise JournalError(f"archive {self.url}: {segment.path} is missing")
        if fmt.sha256(data) != segment.sha256:
            raise JournalError(f"archive {self.url}: {segment.path} does not match its sha256")
        events = fmt.decode(data, segment.path)
        if len(events) != segment.count:
            raise JournalError(f"archive {self.url}: {segment.path} holds {len(events)} events, not {segment.count}")
        self._cache[segment.path] = events
        self._positions[segment.path] = [e.position for e in events]
        self._cached += len(events)
        while self._cached > CACHE_EVENTS and len(self._cache) > 1:
            path, gone = self._cache.popitem(last=False)
            self._positions.pop(path, None)
            self._cached -= len(gone)
        return events

    async def _load_listed(self, segment: Segment) -> list[Envelope] | None:
        """`_load`, or None for a segment whose entity was forgotten since its run was loaded."""
        try:
            return await self._load(segment)
        except JournalError:
            manifest = await self.manifest(segment.entity_type, segment.entity_id)
            if any(s.path == segment.path for s in manifest.segments):
                raise  # still named by its manifest: missing or damaged, not forgotten
            for number, run in self._runs.items():
                self._runs[number] = [s for s in run if s.path != segment.path]
            return None

    def _drop(self, path: str) -> None:
        gone = self._cache.pop(path, None)
        self._positions.pop(path, None)
        if gone is not None:
            self._cached -= len(gone)

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[Envelope]:
        """One entity's archived events with `from_seq <= seq <= to_seq`, in seq order."""
        manifest = await self.manifest(entity_type, entity_id)
        hi = manifest.to_seq if to_seq is None else to_seq
        out: list[Envelope] = []
        for s in manifest.segments:
            if s.to_seq >= from_seq and s.from_seq <= hi:
                out.extend(e for e in await self._load(s) if from_seq <= e.seq <= hi)
        return out

    async def refresh(self) -> None:
        """Load the run files written since the last look (by any process)."""
        for path, _ in await self.store.list("runs/"):
            try:
                number = int(path.rsplit("/", 1)[-1].split(".", 1)[0])
            except ValueError:
                continue
            if number in self._runs:
                continue
            raw = await self.store.get(path)
            if raw is not None:
                self._apply(msgspec.json.decode(raw, type=Run))

    def indexed(self, path: str) -> bool:
        """Whether a loaded run file lists the segment (reads by position find it)."""
        return any(s.path == path for s in self._segments())

    def latest_run(self) -> int:
        """The highest run number loaded (0 if none)."""
        return max(self._runs, default=0)

    def _segments(self) -> Iterable[Segment]:
        for run in self._runs.values():
            yield from run

    async def read_positions(self, low: int, high: int | None, limit: int) -> list[Envelope]:
        """Archived events with `low <= position <= high`, in position order, at most `limit` (from the run files).

        Within a segment positions rise with seqs, so each segment is cut by bisection and the cuts
        merged: a page costs its own events, not the archive's.
        """
        top = high if high is not None else sys.maxsize
        cuts: list[list[Envelope]] = []
        for s in list(self._segments()):
            if s.last_position >= low and s.first_position <= top:
                events = await self._load_listed(s)
                if events is None:
                    continue
                positions = self._positions[s.path]
                cut = events[bisect.bisect_left(positions, low) : bisect.bisect_right(positions, top)]
                if cut:
                    cuts.append(cut[:limit])
        if len(cuts) == 1:
            return cuts[0]
        merged = heapq.merge(*cuts, key=lambda e: e.position)
        out: list[Envelope] = []
        for e in merged:
            if out and out[-1].position == e.position:
                continue  # the same event in two runs (archived again after a restore)
            out.append(e)
            if len(out) == limit:
                break
        return out

    # -- operating -------------------------------------------------------------------------------

    async def manifests(self) -> list[Manifest]:
        out = []
        for path, _ in await self.store.list("manifests/"):
            raw = await self.store.get(path)
            if raw is not None:
                out.append(msgspec.json.decode(raw, type=Manifest))
        return out

    async def status(self) -> Status:
        manifests = await self.manifests()
        await self.refresh()
        segs = [s for m in manifests for s in m.segments]
        return Status(
            url=self.url,
            entities=len(manifests),
            segments=len(segs),
            events=sum(s.count for s in segs),
            bytes=sum(s.size for s in segs),
            runs=len(self._runs),
        )

    async def verify(self) -> tuple[int, list[Problem]]:
        """Read every segment a manifest names and check it (sha256, count, seqs, listed by a run file);
        returns (segments checked, problems)."""
        problems: list[Problem] = []
        checked = 0
        await self.refresh()
        indexed = {s.path for s in self._segments()}
        for m in await self.manifests():
            expected = m.segments[0].from_seq if m.segments else 1
            for s in m.segments:
                checked += 1
                self._drop(s.path)  # read it from the store, not from memory
                if s.from_seq != expected:
                    problems.append(Problem(s.path, f"starts at seq {s.from_seq}, expected {expected}"))
                expected = s.to_seq + 1
                try:
                    events = await self._load(s)
                except JournalError as exc:
                    problems.append(Problem(s.path, str(exc)))
                    continue
                if [e.seq for e in events] != list(range(s.from_seq, s.to_seq + 1)):
                    problems.append(Problem(s.path, "seqs are not the range its name says"))
                if s.path not in indexed:
                    problems.append(Problem(s.path, "no run file lists it: reads by position miss it till a pass does"))
        return checked, problems
