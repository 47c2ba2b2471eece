"""The outbox publisher: publish throughput beside raw nats-py pipelined publishing of the same
messages, and append-to-view latency at a steady 5,000 commands/s."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import msgspec
import nats

from entities.social import Post, Profile, Published
from runtime import App, Envelope, Runtime, SqliteJournal, model_of
from runtime.serve.process.tuning import tune_gc, tune_nats
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.handlers import on
from runtime.streams.publisher import Publisher, StreamSettings, ensure_stream
from runtime.streams.view import Rows, View
from runtime.wire.protocol import event_headers, event_subject

WINDOW = 1024


async def fill(journal: SqliteJournal, events: int, entities: int) -> list[Envelope]:
    codec = model_of(Post).codec
    out: list[Envelope] = []
    heads = [0] * entities
    now = time.time_ns()
    for i in range(events):
        k = i % entities
        heads[k] += 1
        env = Envelope(
            entity_type="post",
            entity_id=f"post-{k}",
            seq=heads[k],
            name="Published",
            version=1,
            payload=codec.encode(Published(f"author-{k % 50}", f"text {i}")),
            recorded_at=now,
        )
        out.extend(await journal.append([env], heads[k] - 1))
    return out


async def publish_memoir(url: str, journal: SqliteJournal) -> float:
    nc = await nats.connect(url)
    publisher = Publisher(journal, nc, prefix="bench", entity_types=["post"], window=WINDOW)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.run)
        await publisher.flush(timeout=300)
        tg.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    await nc.close()
    return publisher.published / elapsed


async def publish_raw(url: str, events: list[Envelope]) -> float:
    """Plain nats-py: the same subjects, headers and payloads, WINDOW acks in flight."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_stream(js, "raw", "post", StreamSettings())
    msgs = [(event_subject("raw", e.entity_type, e.entity_id), e.payload, event_headers(e)) for e in events]
    inbox = nc.new_inbox() + "."
    loop = asyncio.get_running_loop()
    pending: dict[str, asyncio.Future[Any]] = {}

    async def on_ack(msg: Any) -> None:
        pending.pop(msg.subject).set_result(msg)

    await nc.subscribe(inbox + "*", cb=on_ack)
    inflight: deque[asyncio.Future[Any]] = deque()
    started = time.perf_counter()
    for i, (subject, payload, headers) in enumerate(msgs):
        reply = f"{inbox}{i}"
        fut = pending[reply] = loop.create_future()
        await nc.publish(subject, payload, reply=reply, headers=headers)
        inflight.append(fut)
        if len(inflight) >= WINDOW:
            await inflight.popleft()
    while inflight:
        await inflight.popleft()
    elapsed = time.perf_counter() - started
    await nc.close()
    return len(msgs) / elapsed


LAGS: list[float] = []


class Row(msgspec.Struct):
    posts: int = 0


class LagView(View[Row], name="lag", sources=[Post]):
    @on
    def published(self, rows: Rows[Row], e: Published, env: Envelope) -> None:
        LAGS.append((time.time_ns() - env.recorded_at) / 1e6)
        row = rows.get(e.author) or Row()
        rows.put(e.author, Row(row.posts + 1))


async def view_lag(url: str, path: Path, rate: int, seconds: float) -> dict[str, float]:
    """Commands at a steady `rate`; each event's time from append to being applied in the view."""
    app = App("lag", entities=[Post, Profile], views=[LagView])
    LAGS.clear()
    total = int(rate * seconds)
    async with SqliteJournal(path) as journal, Service(app, journal, nats_url=url, prefix="lag") as svc:
        rt: Runtime = svc.runtime
        started = time.perf_counter()
        senders = 256

        async def sender(k: int) -> None:  # sender k sends commands k, k+256, …, each at its due time
            for i in range(k, total, senders):
                await c.sleep_until(started + i / rate)
                await rt.ask("post", f"p{i}", "publish", {"author": f"a{i % 50}", "text": "x"})

        async with anyio.create_task_group() as tg:
            for k in range(senders):
                tg.start_soon(sender, k)
        achieved = total / (time.perf_counter() - started)
        with anyio.fail_after(60):
            while len(LAGS) < total:
                await anyio.sleep(0.01)
    return {"achieved_rate": achieved, "p50": c.percentile(LAGS, 50), "p99": c.percentile(LAGS, 99)}


async def run(events: int, lag_seconds: float) -> dict[str, float]:
    with c.scratch_dir() as d:
        async with EmbeddedNats(d / "nats") as server:
            async with SqliteJournal(d / "journal.db") as journal:
                stored = await fill(journal, events, 1000)
                ours = await publish_memoir(server.url, journal)
            raw = await publish_raw(server.url, stored)
            lag = await view_lag(server.url, d / "lag.db", 5000, lag_seconds)
    return {"published_per_s": ours, "raw_publish_per_s": raw, **lag}


def main() -> None:
    tune_gc()  # as `memoir run` does (see runtime/tuning.py), for the raw baselines in this process too
    tune_nats()
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int)
    args = c.parse(p)
    events = args.events or (50_000 if args.quick else 200_000)
    lag_seconds = 3.0 if args.quick else 10.0
    print(
        f"publisher: {events:,} journal events to JetStream; view lag at 5,000 commands/s for {lag_seconds:g}s",
        flush=True,
    )
    r = c.run(run, events, lag_seconds)
    ratio = r["published_per_s"] / r["raw_publish_per_s"]
    c.line("memoir publisher events/s", r["published_per_s"])
    c.line("raw nats-py pipelined publish msgs/s", r["raw_publish_per_s"])
    c.line("ratio vs raw", f"{ratio:.2f}x")
    c.line("commands/s achieved in the lag run", r["achieved_rate"])
    c.line("append-to-view lag p50 / p99 (ms)", f"{r['p50']:.1f} / {r['p99']:.1f}")
    c.goal("ratio vs raw", ratio, ">=", 0.8)
    c.goal("view lag p99 ms", r["p99"], "<", 50)
    c.finish(
        {
            "events": events,
            "published_per_s": r["published_per_s"],
            "raw_publish_per_s": r["raw_publish_per_s"],
            "ratio_vs_raw": ratio,
            "view_lag_p50_ms": r["p50"],
            "view_lag_p99_ms": r["p99"],
            "lag_rate_achieved": r["achieved_rate"],
        }
    )


if __name__ == "__main__":
    main()
