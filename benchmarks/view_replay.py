"""A new view catching up on 100,000 events: from the start of its stream, and from the co-located
journal (then handing over to the stream), beside a raw read of the same stream with a plain nats-py
pull consumer."""

from __future__ import annotations

import time
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import msgspec
import nats
from nats.js import api
from publisher import fill  # the same events the publisher benchmark uses

from entities.social import AuthorPosts, PostsByAuthor
from runtime import SqliteJournal
from runtime.serve.process.tuning import tune_gc, tune_nats
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.publisher import Publisher
from runtime.streams.view import ViewRunner
from runtime.streams.view_store import SqliteViewStore
from runtime.wire.protocol import stream_name


async def catch_up(
    nc: Any, store: SqliteViewStore, events: int, journal: SqliteJournal | None = None
) -> tuple[float, float]:
    """Events/s of a new view until it has applied `events`: from its stream, or with `journal`
    first from the journal (the view's catch-up path when its service has the journal); and this
    process's CPU µs per event (steadier than the clock on a shared machine)."""
    runner = ViewRunner(PostsByAuthor, store, nc, prefix="bench", batch=1000, journal=journal)
    started, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        while runner.applied < events:
            await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    rows = await runner.query.all()
    assert sum(r.posts for r in rows.values()) == events, "every event applied once"
    assert isinstance(next(iter(rows.values())), AuthorPosts)
    assert journal is None or runner.from_journal == events, "the journal path read them all"
    return events / elapsed, used / events * 1e6


async def raw_read(js: Any, events: int) -> tuple[float, float]:
    sub = await js.pull_subscribe(
        "bench.events.post.*",
        stream=stream_name("bench", "post"),
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.ALL),
    )
    seen = 0
    started, cpu = time.perf_counter(), time.process_time()
    while seen < events:
        msgs = await sub.fetch(1000, timeout=5)
        for m in msgs:
            msgspec.json.decode(m.data)  # a reader does at least this much with each event
        seen += len(msgs)
        await msgs[-1].ack()
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    await sub.unsubscribe()
    return events / elapsed, used / events * 1e6


async def run(events: int) -> dict[str, float]:
    with c.scratch_dir() as d:
        async with EmbeddedNats(d / "nats") as server:
            nc = await nats.connect(server.url)
            async with SqliteJournal(d / "journal.db") as journal:
                await fill(journal, events, 1000)
                publisher = Publisher(journal, nc, prefix="bench", entity_types=["post"])
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publisher.run)
                    await publisher.flush(timeout=300)
                    tg.cancel_scope.cancel()
                js = nc.jetstream()
                raw, raw_cpu = await raw_read(js, events)
                async with SqliteViewStore(d / "views.db") as store:
                    ours, ours_cpu = await catch_up(nc, store, events)
                async with SqliteViewStore(d / "views-journal.db") as store:
                    from_journal, journal_cpu = await catch_up(nc, store, events, journal)
            await nc.close()
    return {
        "replay_events_per_s": ours,
        "journal_replay_events_per_s": from_journal,
        "raw_read_per_s": raw,
        "replay_cpu_us_per_event": ours_cpu,
        "journal_replay_cpu_us_per_event": journal_cpu,
        "raw_read_cpu_us_per_msg": raw_cpu,
    }


def main() -> None:
    tune_gc()  # as `memoir run` does (see runtime/tuning.py), for the raw baselines in this process too
    tune_nats()
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int)
    args = c.parse(p)
    events = args.events or (20_000 if args.quick else 100_000)
    print(f"view replay: a new view over {events:,} events (SQLite view store)", flush=True)
    r = c.run(run, events)
    ratio = r["replay_events_per_s"] / r["raw_read_per_s"]
    cpu_ratio = r["raw_read_cpu_us_per_msg"] / r["replay_cpu_us_per_event"]
    c.line("view catch-up events/s", r["replay_events_per_s"])
    c.line("view catch-up from the journal events/s", r["journal_replay_events_per_s"])
    c.line("raw pull-consumer read msgs/s", r["raw_read_per_s"])
    c.line("ratio vs raw", f"{ratio:.2f}x")
    c.line(
        "CPU µs per event: view / from the journal / raw read",
        f"{r['replay_cpu_us_per_event']:.1f} / {r['journal_replay_cpu_us_per_event']:.1f}"
        f" / {r['raw_read_cpu_us_per_msg']:.1f} (ratio {cpu_ratio:.2f}x)",
    )
    c.goal("view catch-up events/s", r["replay_events_per_s"], ">=", 50_000)
    c.goal("view catch-up from the journal events/s", r["journal_replay_events_per_s"], ">=", 50_000)
    c.finish({"events": events, **r, "ratio_vs_raw": ratio, "ratio_vs_raw_cpu": cpu_ratio})


if __name__ == "__main__":
    main()
