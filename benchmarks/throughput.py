"""Commands per second through the in-process runtime, beside the journal's raw limit and the peer library.

- memoir: senders call `Runtime.ask` with JSON bytes (as the wire delivers them) to many entities;
  every command waits for its own durable, group-committed write.
- raw: the same rows written with the backend's plain client, in batches of the size the
  runtime achieved: what the journal could do with no runtime at all (sqlite3 transactions;
  asyncpg unnest inserts; for JetStream the better of pipelined publishes with one ack each
  and atomic batches with per-subject expected sequences; Python lists for memory).
- eventsourcing: the same commands on the `eventsourcing` library's SQLite persistence.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio

from entities import InventoryItem
from runtime import App, Runtime, open_journal
from runtime.journal.sqlite import _SCHEMA
from runtime.serve.process.tuning import tune_gc, tune_nats

PAYLOAD = b'{"units": 1, "on": "2022-03-01"}'
app = App("bench", entities=[InventoryItem])


async def run_memoir(url: str, commands: int, entities: int, concurrency: int) -> dict[str, Any]:
    ids = [f"SKU-{i}" for i in range(entities)]
    latencies: list[float] = []
    async with open_journal(url) as journal, Runtime(app, journal) as rt:

        async def open_items(part: list[str]) -> None:
            for sku in part:
                await rt.ask("inventory", sku, "open", {"units": 0})

        async with anyio.create_task_group() as tg:  # activation is not what this measures
            for k in range(concurrency):
                tg.start_soon(open_items, ids[k::concurrency])
        remaining = commands

        async def sender(seed: int) -> None:
            nonlocal remaining
            rnd = random.Random(seed)
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                await rt.ask("inventory", ids[rnd.randrange(entities)], "receive", PAYLOAD)
                latencies.append(time.perf_counter() - t)

        writes = getattr(journal, "_writes", None)
        b0, r0 = (writes.batches, writes.requests) if writes else (0, 0)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for s in range(concurrency):
                tg.start_soon(sender, s)
        elapsed = time.perf_counter() - started
        batches = (writes.batches - b0) if writes else 0
        avg_batch = ((writes.requests - r0) / batches) if writes and batches else 1.0
        ck = getattr(journal, "_checkpointer", None)  # SQLite's checkpoint thread, by kind of checkpoint
        checkpoints = {"passive": ck.passive, "tail": ck.tail, "blocking": ck.blocking} if ck is not None else {}
    return {
        "commands_per_s": commands / elapsed,
        "p50_ms": c.percentile(latencies, 50) * 1000,
        "p99_ms": c.percentile(latencies, 99) * 1000,
        "batches": batches,
        "avg_batch": avg_batch,
        "checkpoints": checkpoints,
    }


def raw_sqlite(path: Path, rows: int, entities: int, batch: int) -> float:
    """Plain sqlite3, same schema and pragmas, same rows: the ceiling the journal works under."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-65536")
    db.execute("PRAGMA wal_autocheckpoint=4000")
    db.executescript(_SCHEMA)
    db.executemany(
        "INSERT INTO streams (entity_type, entity_id) VALUES ('inventory', ?)", [(f"SKU-{i}",) for i in range(entities)]
    )
    heads = [0] * (entities + 1)
    rnd = random.Random(1)
    sql = (
        "INSERT INTO events (stream, seq, name, version, recorded_at, command_id, correlation_id,"
        " causation_id, reply, payload) VALUES (?,?,?,?,?,?,?,?,?,?)"
    )
    started = time.perf_counter()
    done = 0
    while done < rows:
        chunk = []
        for _ in range(min(batch, rows - done)):
            sid = rnd.randrange(entities) + 1
            heads[sid] += 1
            chunk.append((sid, heads[sid], "Received", 1, time.time_ns(), None, None, None, None, PAYLOAD))
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sql, chunk)
        db.execute("COMMIT")
        done += len(chunk)
    elapsed = time.perf_counter() - started
    db.close()
    return rows / elapsed


async def raw_postgres(url: str, rows: int, entities: int, batch: int) -> float:
    """Plain asyncpg into the same schema: one unnest INSERT per batch in its own transaction."""
    import asyncpg

    from runtime.journal.postgres import _DDL, parse_postgres_url

    dsn, schema = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_DDL.format(s=schema))
        sids = await conn.fetch(
            f"INSERT INTO {schema}.streams (entity_type, entity_id) SELECT 'inventory', unnest($1::text[])"
            " RETURNING id",
            [f"SKU-{i}" for i in range(entities)],
        )
        ids = [r[0] for r in sids]
        heads = dict.fromkeys(ids, 0)
        rnd = random.Random(1)
        position = 0
        started = time.perf_counter()
        done = 0
        while done < rows:
            cols: list[list[Any]] = [[] for _ in range(6)]
            for _ in range(min(batch, rows - done)):
                sid = ids[rnd.randrange(entities)]
                heads[sid] += 1
                position += 1
                for col, v in zip(cols, (position, sid, heads[sid], "Received", time.time_ns(), PAYLOAD), strict=True):
                    col.append(v)
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {schema}.events (position, stream, seq, name, version, recorded_at, payload)"
                    " SELECT p, s, q, n, 1, r, d FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],"
                    " $5::bigint[], $6::bytea[]) AS t(p, s, q, n, r, d)",
                    *cols,
                )
            done += len(cols[0])
        return rows / (time.perf_counter() - started)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def raw_jetstream(url: str, rows: int, entities: int, window: int = 1024) -> float:
    """Plain nats-py: the same events published to one stream with Nats-Msg-Id, `window` acks in flight."""
    import asyncio
    from collections import deque

    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="RAW_EVENTS", subjects=["raw.events.>"]))
    inbox = nc.new_inbox() + "."
    pending: dict[str, asyncio.Future[Any]] = {}

    async def on_ack(msg: Any) -> None:
        pending.pop(msg.subject).set_result(msg)

    await nc.subscribe(inbox + "*", cb=on_ack)
    loop = asyncio.get_running_loop()
    rnd = random.Random(1)
    heads = [0] * entities
    inflight: deque[asyncio.Future[Any]] = deque()
    started = time.perf_counter()
    for i in range(rows):
        k = rnd.randrange(entities)
        heads[k] += 1
        reply = f"{inbox}{i}"
        fut = pending[reply] = loop.create_future()
        await nc.publish(
            f"raw.events.inventory.SKU-{k}",
            PAYLOAD,
            reply=reply,
            headers={"Nats-Msg-Id": f"inventory/SKU-{k}/{heads[k]}"},
        )
        inflight.append(fut)
        if len(inflight) >= window:
            await inflight.popleft()
    while inflight:
        await inflight.popleft()
    elapsed = time.perf_counter() - started
    await nc.close()
    return rows / elapsed


async def raw_jetstream_batches(url: str, rows: int, entities: int, batch: int) -> float:
    """Plain nats-py: the same events as atomic batches of the runtime's batch size, one at a time,
    each message with its subject's expected last sequence: the journal's group commit, bare."""
    import secrets

    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="RAW_BATCHES", subjects=["rawb.events.>"], allow_atomic=True))
    inbox = nc.new_inbox()
    acks = await nc.subscribe(inbox)
    rnd = random.Random(1)
    heads = [0] * entities
    last = [0] * entities  # stream seq of each subject's last message
    started = time.perf_counter()
    done = 0
    while done < rows:
        size = min(batch, rows - done, 1000)
        picked: list[int] = []
        while len(picked) < size:  # one message per subject per batch, as the journal sends them
            k = rnd.randrange(entities)
            if k not in picked:
                picked.append(k)
        batch_id = secrets.token_hex(11)
        for n, k in enumerate(picked, 1):
            heads[k] += 1
            headers = {
                "Nats-Msg-Id": f"inventory/SKU-{k}/{heads[k]}",
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(n),
                "Nats-Expected-Last-Subject-Sequence": str(last[k]),
            }
            if n == size:
                headers["Nats-Batch-Commit"] = "1"
            await nc.publish(
                f"rawb.events.inventory.SKU-{k}", PAYLOAD, reply=inbox if n == size else "", headers=headers
            )
        ack = await acks.next_msg(timeout=10)
        assert b'"error"' not in ack.data, ack.data
        first = int(json.loads(ack.data)["seq"]) - size + 1
        for n, k in enumerate(picked):
            last[k] = first + n
        done += size
    elapsed = time.perf_counter() - started
    await nc.close()
    return rows / elapsed


def raw_memory(rows: int, entities: int) -> float:
    """The memory journal's limit: appending the same rows to Python lists."""
    log: list[tuple[Any, ...]] = []
    rnd = random.Random(1)
    started = time.perf_counter()
    for i in range(rows):
        log.append(("inventory", f"SKU-{rnd.randrange(entities)}", i, PAYLOAD))  # noqa: PERF401 - one append per row is the thing measured
    return rows / (time.perf_counter() - started)


@contextlib.contextmanager
def embedded_nats(d: Path, sync: str) -> Iterator[str]:
    """A private nats-server for the run, kept alive by a portal thread between the benchmark's phases."""
    from anyio.from_thread import start_blocking_portal

    from runtime.serve.service.embedded_nats import EmbeddedNats

    with start_blocking_portal() as portal:
        server = EmbeddedNats(d / "nats", sync=None if sync == "default" else sync)
        with portal.wrap_async_context_manager(server):
            yield server.url


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


def main() -> None:
    tune_gc()  # as `memoir run` does (see runtime/tuning.py), for the raw baselines in this process too
    tune_nats()
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--journal", choices=["sqlite", "postgres", "nats", "memory"], default="sqlite")
    p.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument(
        "--nats-sync",
        choices=["always", "default"],
        default="always",
        help="the embedded server's sync_interval: always (what the journal needs to survive a"
        " machine crash) or the server default (2 minutes)",
    )
    p.add_argument("--commands", type=int)
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=1000)
    args = c.parse(p)
    commands = args.commands or (60_000 if args.quick else 300_000)
    es_commands = 3_000 if args.quick else 10_000
    sync = f" (nats sync_interval {args.nats_sync})" if args.journal == "nats" else ""
    print(
        f"throughput: {commands:,} commands to {args.entities:,} entities, {args.concurrency} senders,"
        f" journal {args.journal}{sync}",
        flush=True,
    )
    with c.scratch_dir() as d, contextlib.ExitStack() as stack:
        nats_url = stack.enter_context(embedded_nats(d, args.nats_sync)) if args.journal == "nats" else ""
        tag = f"bench_{os.getpid()}"
        url = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{d / 'memoir.db'}",
            "postgres": f"{args.postgres_url}?schema={tag}",
            "nats": f"{nats_url}?prefix=bench",
        }[args.journal]
        m = c.run(run_memoir, url, commands, args.entities, args.concurrency)
        c.line("memoir commands/s", m["commands_per_s"])
        c.line("memoir latency p50 / p99 (ms)", f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f}")
        c.line("group-commit batches (avg size)", f"{m['batches']} ({m['avg_batch']:.0f})")
        if m["checkpoints"]:
            ck = m["checkpoints"]
            kinds = "{passive} / {tail} / {blocking}".format(**ck)
            c.line("WAL checkpoints: thread / writer's tail / writer past the limit", kinds)
        batch = max(1, round(m["avg_batch"]))
        if args.journal == "sqlite":
            raw = raw_sqlite(d / "raw.db", commands, args.entities, batch)
        elif args.journal == "nats":
            # --quick: its rate on fewer rows (with sync_interval always each message is an fsync of its own:
            # 60,000 of them took ~40 s, and it is never the better baseline there)
            pipelined_rows = min(commands, 10_000) if args.quick else commands
            raw_pipelined = c.run(raw_jetstream, nats_url, pipelined_rows, args.entities)
            c.line("raw nats pipelined publishes/s (one ack each)", raw_pipelined)
            raw_batched = c.run(raw_jetstream_batches, nats_url, commands, args.entities, batch)
            c.line("raw nats atomic batches rows/s (same batch size)", raw_batched)
            raw = max(raw_pipelined, raw_batched)  # the better of the two is the backend's limit
        elif args.journal == "postgres":
            c.run(drop_schema, args.postgres_url, tag)
            raw = c.run(raw_postgres, f"{args.postgres_url}?schema={tag}_raw", commands, args.entities, batch)
        else:
            raw = raw_memory(commands, args.entities)
        c.line(f"raw {args.journal} rows/s (same rows, same batches)", raw)
        from _eventsourcing import commands_per_s

        es = commands_per_s(d / "es.db", es_commands, args.entities)
        c.line("eventsourcing commands/s (sqlite)", es)
    ratio_raw, ratio_es = m["commands_per_s"] / raw, m["commands_per_s"] / es
    c.line("ratio vs raw", f"{ratio_raw:.2f}x")
    c.line("ratio vs eventsourcing", f"{ratio_es:.1f}x")
    if args.journal == "sqlite":
        c.goal("commands/s", m["commands_per_s"], ">=", 30_000)
        c.goal("ratio vs raw", ratio_raw, ">=", 0.25)
    if args.journal == "postgres":
        c.goal("commands/s", m["commands_per_s"], ">=", 20_000)
        c.goal("ratio vs raw", ratio_raw, ">=", 0.3)
    if args.journal == "nats":
        c.goal("commands/s", m["commands_per_s"], ">=", 15_000)
        c.goal("ratio vs raw", ratio_raw, ">=", 0.3)
    if args.journal == "sqlite":
        c.goal("ratio vs eventsourcing", ratio_es, ">=", 10)
    c.finish(
        {
            "journal": args.journal,
            **(
                {"nats_sync": args.nats_sync, "raw_pipelined_per_s": raw_pipelined, "raw_batched_per_s": raw_batched}
                if args.journal == "nats"
                else {}
            ),
            "commands": commands,
            "entities": args.entities,
            "concurrency": args.concurrency,
            "commands_per_s": m["commands_per_s"],
            "p50_ms": m["p50_ms"],
            "p99_ms": m["p99_ms"],
            "avg_batch": m["avg_batch"],
            "raw_rows_per_s": raw,
            "eventsourcing_commands_per_s": es,
            "ratio_vs_raw": ratio_raw,
            "ratio_vs_eventsourcing": ratio_es,
        }
    )


if __name__ == "__main__":
    main()
