"""Memory: one command to each of 1,000,000 entities with at most 100,000 live actors; peak RSS."""

from __future__ import annotations

import time

import _common as c  # puts the repository on sys.path
import anyio

from entities import InventoryItem
from runtime import App, Runtime, SqliteJournal
from runtime.serve.process.tuning import tune_gc

app = App("mem", entities=[InventoryItem])
PAYLOAD = b'{"units": 5}'


async def run(path: str, entities: int, max_live: int, concurrency: int) -> dict[str, float]:
    async with SqliteJournal(path) as journal, Runtime(app, journal, max_live_actors=max_live) as rt:
        next_id = 0
        most_live = 0

        async def sender() -> None:
            nonlocal next_id, most_live
            while next_id < entities:
                i = next_id
                next_id += 1
                await rt.ask("inventory", f"SKU-{i:07d}", "open", PAYLOAD)
                if i % 1000 == 0:
                    most_live = max(most_live, rt.live_actors)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(sender)
        elapsed = time.perf_counter() - started
        stored = await journal.last_position()
        return {"seconds": elapsed, "live": rt.live_actors, "most_live": most_live, "stored": stored}


def main() -> None:
    tune_gc()  # as `memoir run` does (see runtime/tuning.py)
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--entities", type=int)
    p.add_argument("--max-live", type=int, default=100_000)
    args = c.parse(p)
    entities = args.entities or (100_000 if args.quick else 1_000_000)
    baseline = c.peak_rss_mb()
    print(f"memory: {entities:,} entities, at most {args.max_live:,} live actors", flush=True)
    with c.scratch_dir() as d:
        r = c.run(run, str(d / "memoir.db"), entities, args.max_live, 500)
    peak = c.peak_rss_mb()
    assert r["stored"] == entities
    c.line("baseline RSS: interpreter and imports (MB)", f"{baseline:.0f}")
    c.line("peak RSS (MB)", f"{peak:.0f}")
    c.line("live actors at the end (most seen)", f"{r['live']:,} ({r['most_live']:,})")
    c.line("commands/s (each one an activation)", entities / r["seconds"])
    c.goal("peak RSS MB", peak, "<=", 1024)
    c.finish(
        {
            "entities": entities,
            "peak_rss_mb": peak,
            "baseline_rss_mb": baseline,
            "live_actors": r["live"],
            "max_live_actors": args.max_live,
            "commands_per_s": entities / r["seconds"],
        }
    )


if __name__ == "__main__":
    main()
