"""Tiered storage: replaying one entity and a new view's catch-up from the archive (a local directory
through obstore, events moved out of the journal) against the same reads from the SQLite journal."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import msgspec

from runtime import Envelope, Journal, Snapshot, SqliteJournal
from runtime.archive import Archive, Archiver, ArchiverSettings, ArchivingJournal
from runtime.serve.process.tuning import tune_gc

DAY = 86400 * 10**9
REPEATS = 3


def _events(entity_type: str, entity_id: str, first: int, n: int, when: int) -> list[Envelope]:
    return [
        Envelope(
            entity_type=entity_type,
            entity_id=entity_id,
            seq=seq,
            name="Received",
            version=1,
            payload=msgspec.json.encode({"units": seq % 7 + 1, "on": "2022-03-01", "note": "restock"}),
            recorded_at=when + seq,
            command_id=f"cmd-{entity_id}-{seq}",
        )
        for seq in range(first, first + n)
    ]


async def fill(journal: Journal, hot: int, entities: int, each: int) -> None:
    """One entity with `hot` events, and `entities` more with `each`, interleaved; a snapshot at every head."""
    when = time.time_ns() - 30 * DAY
    for first in range(1, hot + 1, 500):
        await journal.append(_events("inventory", "hot", first, min(500, hot - first + 1), when), first - 1)
    for first in range(1, each + 1, 10):
        for i in range(entities):
            await journal.append(_events("post", f"p{i}", first, min(10, each - first + 1), when), first - 1)
    heads = [("inventory", "hot", hot), *(("post", f"p{n}", each) for n in range(entities))]
    for t, key, head in heads:
        await journal.save_snapshot(Snapshot(entity_type=t, entity_id=key, seq=head, payload=b"{}", recorded_at=when))


async def replay(journal: Journal) -> int:
    """Read one entity's whole history and decode each event, as a replay does before applying it."""
    events = await journal.read("inventory", "hot")
    for e in events:
        msgspec.json.decode(e.payload)
    return len(events)


async def catch_up(journal: Journal) -> int:
    """Read the journal by position in the view catch-up's pages, decoding each event."""
    count, position = 0, 1
    while page := await journal.read_all(position, 10_000):
        for e in page:
            msgspec.json.decode(e.payload)
        count += len(page)
        position = page[-1].position + 1
    return count


async def best(fn: Callable[[], Awaitable[int]], expect: int) -> float:
    """Events/s, the best of a few runs (the machine is shared)."""
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        n = await fn()
        rates.append(n / (time.perf_counter() - started))
        assert n == expect, f"read {n} events, expected {expect}"
    return max(rates)


async def run(dirpath: Path, hot: int, entities: int, each: int) -> dict[str, Any]:
    url = f"file://{dirpath / 'archive'}"
    total = hot + entities * each
    async with SqliteJournal(dirpath / "journal.db") as bare:
        await fill(bare, hot, entities, each)
        journal_replay = await best(lambda: replay(bare), hot)
        journal_catch_up = await best(lambda: catch_up(bare), total)
        started = time.perf_counter()
        moved = await Archiver(bare, Archive(url), ArchiverSettings(after=86400, max_entities=entities + 1)).run_once()
        archiving = moved.events / (time.perf_counter() - started)
        assert moved.events == total and await bare.read_all(1) == [], "everything moved"
        # a new Archive each run: nothing decoded is kept from the run before (the files may be in the page cache)
        archive_replay = await best(lambda: replay(ArchivingJournal(bare, Archive(url))), hot)
        archive_catch_up = await best(lambda: catch_up(ArchivingJournal(bare, Archive(url))), total)
        size = sum(p.stat().st_size for p in (dirpath / "archive").rglob("*.jsonl.gz"))
    return {
        "journal_replay_events_per_s": journal_replay,
        "archive_replay_events_per_s": archive_replay,
        "journal_catch_up_events_per_s": journal_catch_up,
        "archive_catch_up_events_per_s": archive_catch_up,
        "archiving_events_per_s": archiving,
        "archive_bytes_per_event": size / total,
    }


def main() -> None:
    tune_gc()
    p = c.parser(__doc__.splitlines()[0])
    args = c.parse(p)
    hot, entities, each = (20_000, 200, 50) if args.quick else (200_000, 2_000, 50)
    print(f"archive: one entity of {hot:,} events; a catch-up over {hot + entities * each:,} events", flush=True)
    with c.scratch_dir() as d:
        r = c.run(run, d, hot, entities, each)
    replay_ratio = r["archive_replay_events_per_s"] / r["journal_replay_events_per_s"]
    catch_up_ratio = r["archive_catch_up_events_per_s"] / r["journal_catch_up_events_per_s"]
    c.line("replay from the journal events/s", r["journal_replay_events_per_s"])
    c.line("replay from the archive events/s", r["archive_replay_events_per_s"])
    c.line("catch-up from the journal events/s", r["journal_catch_up_events_per_s"])
    c.line("catch-up from the archive events/s", r["archive_catch_up_events_per_s"])
    c.line("archiving (write, read back, drop) events/s", r["archiving_events_per_s"])
    c.line("archive bytes per event (gzip JSON Lines)", f"{r['archive_bytes_per_event']:.1f}")
    c.line("replay ratio archive/journal", f"{replay_ratio:.2f}x")
    c.line("catch-up ratio archive/journal", f"{catch_up_ratio:.2f}x")
    c.goal("archive replay / journal replay", replay_ratio, ">=", 0.5)
    c.goal("archive catch-up / journal catch-up", catch_up_ratio, ">=", 0.5)
    c.finish({"hot_events": hot, **r, "replay_ratio": replay_ratio, "catch_up_ratio": catch_up_ratio})


if __name__ == "__main__":
    main()
