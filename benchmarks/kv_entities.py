"""Key-value entity commands/s against event-sourced ones, on the same journal, in the same run.

Three kinds of the same counter, each written by the same senders to the same number of
entities through `Runtime.ask` (JSON bytes, as the wire delivers them):

- es: an EventSourcedEntity persisting `Added(units)` (a snapshot every 100 events);
- kv: a KeyValueEntity storing its whole state (`Count(units, changes)`), with its default
  snapshot every 16 changes (recovery reads at most those and decodes only the newest);
- kv_every_change: the same key-value entity offering a snapshot after every change: what
  that would cost (the saver competes for the journal, and behind, drops most of them).

Then each kind's entities are activated cold by a new runtime (`get` on every entity): the
recovery rate. The kinds run interleaved for `--rounds` rounds, each on a fresh journal, and
the medians are reported (a machine shared with other work slows all kinds alike). The last
line is one JSON object.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, ClassVar

import _common as c  # puts the repository on sys.path
import anyio
import msgspec

from runtime import Effect, EventSourcedEntity, KeyValueEntity, Runtime, applies, command, open_journal
from runtime.serve.process.tuning import tune_gc, tune_nats


class Count(msgspec.Struct, frozen=True):
    units: int = 0
    changes: int = 0


class Added(msgspec.Struct, frozen=True):
    units: int


class EsCounter(EventSourcedEntity[Count], name="es"):
    initial = Count()

    @command
    def add(self, count: Count, units: int) -> Effect[int]:
        return self.persist(Added(units)).reply(lambda s: s.units)

    @command
    def get(self, count: Count) -> Effect[Count]:
        return self.reply(count)

    @applies
    def added(self, count: Count, e: Added) -> Count:
        return Count(count.units + e.units, count.changes + 1)


class KvCounter(KeyValueEntity[Count], name="kv"):
    initial = Count()

    @command
    def add(self, count: Count, units: int) -> Effect[int]:
        new = Count(count.units + units, count.changes + 1)
        return self.update(new).reply(new.units)

    @command
    def get(self, count: Count) -> Effect[Count]:
        return self.reply(count)


class KvEveryChange(KvCounter, name="kv_every_change"):
    snapshot_every: ClassVar[int] = 1


KINDS = {"es": EsCounter, "kv": KvCounter, "kv_every_change": KvEveryChange}
PAYLOAD = b'{"units": 1}'


async def run_kind(url: str, kind: str, commands: int, entities: int, concurrency: int) -> dict[str, Any]:
    ids = [f"e-{i}" for i in range(entities)]
    latencies: list[float] = []
    cls = KINDS[kind]
    async with open_journal(url) as journal:
        async with Runtime([cls], journal) as rt:
            remaining = commands

            async def sender(seed: int) -> None:
                nonlocal remaining
                rnd = random.Random(seed)
                while remaining > 0:
                    remaining -= 1
                    t = time.perf_counter()
                    await rt.ask(kind, ids[rnd.randrange(entities)], "add", PAYLOAD)
                    latencies.append(time.perf_counter() - t)

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for s in range(concurrency):
                    tg.start_soon(sender, s)
            elapsed = time.perf_counter() - started
            dropped = rt.snapshots_dropped
        async with Runtime([cls], journal) as rt:  # cold: every entity recovers from the journal
            total = 0

            async def activate(part: list[str]) -> None:
                nonlocal total
                for entity_id in part:
                    state = (await rt.ask(kind, entity_id, "get")).result
                    total += state.changes

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for k in range(concurrency):
                    tg.start_soon(activate, ids[k::concurrency])
            recovery = time.perf_counter() - started
    assert total == commands, f"{kind}: recovered {total} changes, sent {commands}"
    return {
        "commands_per_s": commands / elapsed,
        "p50_ms": c.percentile(latencies, 50) * 1000,
        "p99_ms": c.percentile(latencies, 99) * 1000,
        "snapshots_dropped": dropped,
        "recoveries_per_s": entities / recovery,
    }


def main() -> None:
    tune_gc()
    tune_nats()
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--journal", choices=["sqlite", "postgres", "nats", "memory"], default="sqlite")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--commands", type=int, help="per kind and round")
    p.add_argument("--entities", type=int)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3, help="each kind runs once per round, kinds interleaved")
    args = c.parse(p)
    commands = args.commands or (10_000 if args.quick else 100_000)
    entities = args.entities or (1_000 if args.quick else 10_000)
    what = f"{commands:,} commands to {entities:,} entities per kind and round, {args.concurrency} senders"
    print(f"kv_entities: {what}, {args.rounds} rounds, journal {args.journal}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with c.scratch_dir() as d:
        for n in range(args.rounds):  # interleaved: a machine shared with others slows all kinds alike
            for kind in KINDS:
                r = c.run(_one_run, args, d / f"{kind}-{n}", kind, commands, entities)
                runs[kind].append(r)
                c.line(f"round {n + 1} {kind} commands/s", r["commands_per_s"])
    results = {kind: _median(rs) for kind, rs in runs.items()}
    for kind, r in results.items():
        c.line(f"{kind} commands/s (median)", r["commands_per_s"])
        c.line(f"{kind} latency p50 / p99 (ms, median)", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}")
        c.line(f"{kind} cold recoveries/s (median)", r["recoveries_per_s"])
        c.line(f"{kind} snapshots dropped (saver behind)", r["snapshots_dropped"])
    ratio = results["kv"]["commands_per_s"] / results["es"]["commands_per_s"]
    c.line("kv / es commands/s", f"{ratio:.2f}x")
    c.finish(
        {
            "benchmark": "kv_entities",
            "journal": args.journal,
            "commands": commands,
            "entities": entities,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            **{f"{k}_{f}": v for k, r in results.items() for f, v in r.items()},
            "kv_over_es": ratio,
        }
    )


async def _one_run(args: Any, d: Path, kind: str, commands: int, entities: int) -> dict[str, Any]:
    """One kind on a journal of its own (a fresh file, schema or server)."""
    if args.journal == "nats":
        from runtime.serve.service.embedded_nats import EmbeddedNats

        async with EmbeddedNats(d / "nats") as server:
            return await run_kind(f"{server.url}?prefix=bench", kind, commands, entities, args.concurrency)
    if args.journal == "postgres":
        schema = f"bench_kv_{d.name.replace('-', '_')}_{os.getpid()}"
        try:
            return await run_kind(f"{args.postgres_url}?schema={schema}", kind, commands, entities, args.concurrency)
        finally:
            await _drop(args.postgres_url, schema)
    d.mkdir(parents=True, exist_ok=True)
    url = "memory://" if args.journal == "memory" else f"sqlite:///{d / 'journal.db'}"
    return await run_kind(url, kind, commands, entities, args.concurrency)


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    return {f: statistics.median(r[f] for r in rs) for f in rs[0]}


async def _drop(base: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
