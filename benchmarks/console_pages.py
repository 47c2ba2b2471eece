"""The web console's pages on an entity with 10,000 events: the time to answer each, over HTTP.

The events are written straight into the journal, so there is no snapshot: every time travel
folds from seq 1, the worst case (a runtime's own snapshots only make it cheaper).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import httpx

from entities import app
from entities.inventory import InventoryItem, Opened, Received
from runtime import Envelope, Service, SqliteJournal, model_of
from runtime.serve.service import EmbeddedNats
from runtime.serve.service.http import HttpGateway

TOKEN = "console-benchmark-" + "x" * 32
ENTITY = "BIG-1"


def envelopes(first: int, n: int) -> list[Envelope]:
    codec = model_of(InventoryItem).codec
    opened = codec.encode(Opened(0, dt.date(2022, 1, 1), None))
    received = codec.encode(Received(1, dt.date(2022, 3, 1)))
    now = time.time_ns()
    return [
        Envelope(
            entity_type="inventory",
            entity_id=ENTITY,
            seq=seq,
            name="Opened" if seq == 1 else "Received",
            version=1,
            payload=opened if seq == 1 else received,
            recorded_at=now,
        )
        for seq in range(first, first + n)
    ]


async def fill(journal: SqliteJournal, events: int) -> None:
    for first in range(1, events + 1, 2000):
        await journal.append(envelopes(first, min(2000, events - first + 1)), first - 1)


def pages(events: int) -> dict[str, str]:
    last = events - (events - 1) % 50
    base = f"/ui/entity?type=inventory&id={ENTITY}"
    return {
        "first page, state now": base,
        "middle page, time travel": f"{base}&seq={events // 2}",
        "last page": f"{base}&first={last}",
        "last page, time travel to the last seq": f"{base}&first={last}&seq={events}",
        "live row (the last event)": f"/ui/row?type=inventory&id={ENTITY}&seq={events}",
        "metrics": "/ui/metrics",
    }


async def measure(path: Path, events: int, rounds: int) -> dict[str, Any]:
    async with SqliteJournal(path / "journal.db") as journal:
        await fill(journal, events)
    async with (
        EmbeddedNats(path / "nats") as server,
        SqliteJournal(path / "journal.db") as journal,
        Service(app, journal, nats_url=server.url) as svc,
        anyio.create_task_group() as tg,
    ):
        gateway = HttpGateway(svc, port=0, token=TOKEN)
        await tg.start(gateway.run)
        out: dict[str, Any] = {}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:
            for label, url in pages(events).items():
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    answer = await http.get(url)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (url, answer.status_code)
                out[label] = (c.percentile(times, 50), c.percentile(times, 95))
        await gateway.stop()
        tg.cancel_scope.cancel()
    return out


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000)
    args = c.parse(p)
    rounds = 5 if args.quick else 30
    print(f"console pages: inventory {ENTITY} with {args.events:,} events, no snapshot; {rounds} requests each")
    with c.scratch_dir() as d:
        got = c.run(measure, d, args.events, rounds)
    for label, (p50, p95) in got.items():
        c.line(f"{label} (ms p50 / p95)", f"{p50:.1f} / {p95:.1f}")
    worst = max(p95 for _, p95 in got.values())
    c.goal("slowest page p95 ms", worst, "<", 200)
    c.finish({"events": args.events, "slowest_p95_ms": worst} | {k: v[0] for k, v in got.items()})


if __name__ == "__main__":
    main()
