"""Recovery: replaying one entity's 20,000 events, beside `eventsourcing` reloading the same; and
activation from a snapshot."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path

from entities.inventory import InventoryItem, Received
from runtime import App, Envelope, Runtime, SqliteJournal, model_of
from runtime.serve.process.tuning import tune_gc


class Unsnapshotted(InventoryItem, name="inventory"):
    snapshot_every = 0  # pure replay: every event is read and applied


def envelopes(entity_id: str, first: int, n: int) -> list[Envelope]:
    codec = model_of(InventoryItem).codec
    payload = codec.encode(Received(1, __import__("datetime").date(2022, 3, 1)))
    now = time.time_ns()
    return [
        Envelope(
            entity_type="inventory",
            entity_id=entity_id,
            seq=first + i,
            name="Received",
            version=1,
            payload=payload,
            recorded_at=now,
        )
        for i in range(n)
    ]


async def fill(journal: SqliteJournal, entity_id: str, events: int) -> None:
    for first in range(1, events + 1, 2000):
        n = min(2000, events - first + 1)
        await journal.append(envelopes(entity_id, first, n), first - 1)


async def activation_seconds(path: Path, app: App, entity_id: str) -> float:
    """A fresh runtime; the time of the first command, which must recover the entity."""
    async with SqliteJournal(path) as journal, Runtime(app, journal) as rt:
        started = time.perf_counter()
        reply = await rt.ask("inventory", entity_id, "get")
        elapsed = time.perf_counter() - started
        assert reply.seq > 0
        return elapsed


async def run_memoir(path: Path, events: int, snap_entities: int) -> dict[str, Any]:
    async with SqliteJournal(path) as journal:
        await fill(journal, "replayed", events)
    replay = min([await activation_seconds(path, App("r", entities=[Unsnapshotted]), "replayed") for _ in range(3)])

    snapped = App("s", entities=[InventoryItem])  # snapshot_every = 100
    async with SqliteJournal(path) as journal, Runtime(snapped, journal) as rt:
        for k in range(snap_entities):
            await fill(journal, f"snap-{k}", events)
            await rt.ask("inventory", f"snap-{k}", "receive", {"units": 1, "on": "2022-03-01"})  # recover + snapshot
            for _ in range(99):  # reach the next multiple of 100: the actor snapshots
                await rt.ask("inventory", f"snap-{k}", "receive", {"units": 1, "on": "2022-03-01"})
    async with SqliteJournal(path) as journal:
        snap = await journal.load_snapshot("inventory", "snap-0")
        assert snap is not None, "a snapshot was written"
    # Activation as a running service sees it: a fresh runtime (nothing cached), warmed up by one
    # unrelated command, then the first command to each snapshotted entity.
    times = []
    async with SqliteJournal(path) as journal, Runtime(snapped, journal) as rt:
        await rt.ask("inventory", "warm-up", "get")
        for k in range(snap_entities):
            started = time.perf_counter()
            await rt.ask("inventory", f"snap-{k}", "get")
            times.append(time.perf_counter() - started)
    return {"replay_s": replay, "snapshot_activation_ms": statistics.median(times) * 1000, "snapshot_seq": snap.seq}


def run_eventsourcing(path: Path, events: int) -> float:
    from _eventsourcing import shop

    app = shop(path)
    item_id = app.open("SKU-replayed")
    item: Any = app.repository.get(item_id)
    for _ in range(events - 1):
        item.receive(1, "2022-03-01")
    app.save(item)
    times = []
    for _ in range(3):
        fresh = shop(path)  # no cache: a real reload
        started = time.perf_counter()
        reloaded: Any = fresh.repository.get(item_id)
        times.append(time.perf_counter() - started)
        assert reloaded.version == events
    return min(times)


def main() -> None:
    tune_gc()  # as `memoir run` does (see runtime/tuning.py)
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    args = c.parse(p)
    snap_entities = 3 if args.quick else 10
    print(
        f"recovery: one entity with {args.events:,} events; snapshot activation over {snap_entities} entities",
        flush=True,
    )
    with c.scratch_dir() as d:
        m = c.run(run_memoir, d / "memoir.db", args.events, snap_entities)
        es = run_eventsourcing(d / "es.db", args.events)
    memoir_rate, es_rate = args.events / m["replay_s"], args.events / es
    c.line("memoir replay events/s", memoir_rate)
    c.line("eventsourcing reload events/s", es_rate)
    c.line("ratio vs eventsourcing", f"{memoir_rate / es_rate:.1f}x")
    c.line(f"activation from a snapshot at seq {m['snapshot_seq']} (ms, median)", f"{m['snapshot_activation_ms']:.3f}")
    c.goal("ratio vs eventsourcing", memoir_rate / es_rate, ">=", 3)
    c.goal("snapshot activation ms", m["snapshot_activation_ms"], "<", 1)
    c.finish(
        {
            "events": args.events,
            "replay_events_per_s": memoir_rate,
            "eventsourcing_replay_events_per_s": es_rate,
            "ratio_vs_eventsourcing": memoir_rate / es_rate,
            "snapshot_activation_ms": m["snapshot_activation_ms"],
        }
    )


if __name__ == "__main__":
    main()
