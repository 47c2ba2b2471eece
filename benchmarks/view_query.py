"""View queries on 1,000,000 rows in the SQLite and PostgreSQL view stores: an indexed equality
query and an indexed range query with order and limit, against the same queries as full scans of
the same rows in the same run; the apply rate with and without two indexes, of the store alone
(rows written in batches) and of the view (a ViewRunner applying the same rows as events from a
journal: decode, handler, store); the store's rate when the rows exist already and change (an
update, with and without the indexes); and the latency of a live query's change events at 1,000
row changes/s."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import msgspec
from nats.aio.client import Client as NATS

from runtime import Effect, EventSourcedEntity, Rows, SqliteJournal, applies, command, on
from runtime.model.entity import model_of
from runtime.model.envelope import Envelope
from runtime.serve.process.tuning import tune_gc
from runtime.streams.query import Eq, Ge, Plan, Query, plan
from runtime.streams.query_live import Batch, Change, Changes, live
from runtime.streams.view import View, ViewRunner
from runtime.streams.view_store import PostgresViewStore, SqliteViewStore, ViewStore, Work

BATCH = 1000  # rows per store transaction (the store alone); events per journal read (the view)
VIEW_EVENTS = 100_000  # events the view's apply rate is measured on (--quick: 20,000)


class Account(msgspec.Struct):
    owner: str
    region: str
    name: str
    balance: int
    note: str = "an account row of a typical size, with some text in it"


class Accounts(View[Account], name="accounts", indexes=["owner", "balance"]):
    """Two indexes: the `indexed` copy has them, the `plain` copy of the same rows has none."""


class Opened(msgspec.Struct):
    """The event each account row comes from (the view's apply rate)."""

    owner: str
    region: str
    name: str
    balance: int


class Ledger(EventSourcedEntity[int], name="ledger"):
    initial = 0

    @command
    def open(self, n: int, owner: str, region: str, name: str, balance: int) -> Effect[int]:
        return self.persist(Opened(owner, region, name, balance)).reply(lambda s: s)

    @applies
    def opened(self, n: int, e: Opened) -> int:
        return n + 1


class PlainLedgerView(View[Account], name="ledger_plain", sources=[Ledger]):
    """A row per account, from its event, as a view's handler writes it; no index."""

    @on
    def opened(self, rows: Rows[Account], e: Opened, env: Envelope) -> None:
        if rows.get(env.entity_id) is None:
            rows.put(env.entity_id, Account(e.owner, e.region, e.name, e.balance))


class IndexedLedgerView(PlainLedgerView, name="ledger_indexed", sources=[Ledger], indexes=["owner", "balance"]):
    """The same view with the benchmark's two indexes."""


def rows(n: int, seed: int = 25) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    enc = msgspec.json.Encoder()
    regions = ["eu", "us", "apac", "latam"]
    owners = max(1, n // 10)  # ~10 rows per owner
    order = list(range(n))
    rng.shuffle(order)  # rows arrive in no key order, as a view's entities do
    return [
        (
            f"acc-{order[i]:08}",
            enc.encode(
                Account(f"owner-{rng.randrange(owners):07}", rng.choice(regions), f"n{i}", rng.randrange(n * 10))
            ),
        )
        for i in range(n)
    ]


def writes(rows: dict[str, bytes | None], checkpoints: dict[str, int]) -> Work:
    """A batch that writes `rows` and `checkpoints` (what a view's handlers would return)."""
    return lambda _raw: (rows, checkpoints)


async def fill(store: ViewStore, view: str, data: list[tuple[str, bytes]]) -> tuple[float, float]:
    """Rows/s written in batches of BATCH, each one transaction with a checkpoint, as a view applies:
    per second of the clock, and per second of this process's CPU (steadier on a shared machine)."""
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(data), BATCH):
        await store.transact(view, writes(dict(data[i : i + BATCH]), {"bench": i}))
    return len(data) / (time.perf_counter() - started), len(data) / (time.process_time() - cpu)


async def timed(store: ViewStore, view: str, plans: list[Plan]) -> list[float]:
    out = []
    for p in plans:
        started = time.perf_counter()
        found = await store.select(view, p)
        out.append((time.perf_counter() - started) * 1000)
        assert found or view == "plain" or p.limit, "an indexed query found rows"
    return out


async def journal_of(path: Any, data: list[tuple[str, bytes]]) -> SqliteJournal:
    """A journal holding one `Opened` event per row (concurrent appends, so group commit batches them)."""
    journal = SqliteJournal(path)
    await journal.open()
    codec = model_of(Ledger).codec
    dec = msgspec.json.Decoder(Account)
    now = time.time_ns()
    envs = [
        Envelope(
            entity_type="ledger",
            entity_id=k,
            seq=1,
            name="Opened",
            version=1,
            payload=codec.encode(Opened(a.owner, a.region, a.name, a.balance)),
            recorded_at=now,
        )
        for k, a in ((k, dec.decode(v)) for k, v in data)
    ]

    async def appender(part: list[Envelope]) -> None:
        for env in part:
            await journal.append([env], 0)

    async with anyio.create_task_group() as tg:
        for i in range(64):
            tg.start_soon(appender, envs[i::64])
    return journal


async def view_apply(
    store: ViewStore, journal: SqliteJournal, view: type[View[Any]], n: int
) -> tuple[float, float, float]:
    """Events/s of a new view catching up on `n` events from the journal (read in pages of BATCH;
    the runner stores the pages read while it stored the one before in one transaction, up to its
    default of 10,000 events): the runner's own path, decode, handler and store, with no NATS in
    the way. Also the events per transaction it came to."""
    runner = ViewRunner(view, store, NATS(), prefix="bench", journal=journal, catchup_behind=1, catchup_page=BATCH)
    await runner.query.declare()
    started, cpu = time.perf_counter(), time.process_time()
    applied = await runner.catch_up_from_journal()
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    assert applied == n, f"the view applied {applied} of {n} events"
    return n / elapsed, n / used, n / max(1, runner.version)  # a version per transaction that wrote rows


def stats(ms: list[float]) -> tuple[float, float]:
    return c.percentile(ms, 50), c.percentile(ms, 99)


async def live_latency(store: ViewStore, data: list[tuple[str, bytes]], rate: int, seconds: float) -> float:
    """p99 ms from a batch's commit start to its change event in a live query, at `rate` changes/s
    (a batch every 10 ms), the runner's path: transact, then publish under the lock."""
    changes, lock = Changes(), anyio.Lock()
    decode = msgspec.json.Decoder(Account).decode
    sent: dict[int, float] = {}
    lat: list[float] = []
    per = max(1, rate // 100)

    async def snapshot() -> dict[str, bytes]:
        return {}

    async with live(changes, lock, snapshot, lambda: 0, Ge("balance", 0), decode) as events:

        async def writer() -> None:
            started = time.perf_counter()
            for v in range(1, int(seconds * 100) + 1):
                await c.sleep_until(started + v / 100)
                chunk: dict[str, bytes | None] = {
                    f"live-{v}-{j}": row for j, (_, row) in enumerate(random.sample(data, per))
                }
                sent[v] = time.perf_counter()
                async with lock:
                    await store.transact("live", writes(chunk, {}))
                    changes.publish(Batch(v, chunk))

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            want = int(seconds * 100) * per
            got = 0
            async for event in events:
                if isinstance(event, Change):
                    lat.append((time.perf_counter() - sent[event.version]) * 1000)
                    got += 1
                    if got >= want:
                        break
    return c.percentile(lat, 99)


async def bench_store(
    make: Callable[[], ViewStore],
    n: int,
    queries: int,
    scans: int,
    live_s: float,
    journal_path: Any,
    view_events: int,
) -> dict[str, float]:
    data = rows(n)
    rng = random.Random(7)
    owners = [msgspec.json.decode(data[rng.randrange(n)][1], type=Account).owner for _ in range(queries)]
    top = n * 10
    fields = Accounts.query_fields
    eq = [plan("accounts", fields, Query(where=Eq("owner", o), limit=100)) for o in owners]
    rng_plans = [
        plan("accounts", fields, Query(where=Ge("balance", rng.randrange(top)), order_by=["balance"], limit=10))
        for _ in range(queries)
    ]
    out: dict[str, float] = {}
    async with make() as store:
        out["apply_rows_per_s_no_index"], out["apply_rows_per_cpu_s_no_index"] = await fill(store, "plain", data)
        await store.declare("indexed", Accounts.query_indexes)
        out["apply_rows_per_s_two_indexes"], out["apply_rows_per_cpu_s_two_indexes"] = await fill(
            store, "indexed", data
        )
        if isinstance(store, PostgresViewStore):
            async with store._conn() as conn:
                await conn.execute(f"ANALYZE {store.schema}.view_rows")
        await timed(store, "indexed", eq[:10])  # warm the caches both ways
        await timed(store, "plain", eq[:2])
        out["eq_p50_ms"], out["eq_p99_ms"] = stats(await timed(store, "indexed", eq))
        out["eq_scan_p50_ms"], out["eq_scan_p99_ms"] = stats(await timed(store, "plain", eq[:scans]))
        out["range_p50_ms"], out["range_p99_ms"] = stats(await timed(store, "indexed", rng_plans))
        out["range_scan_p50_ms"], out["range_scan_p99_ms"] = stats(await timed(store, "plain", rng_plans[:scans]))
        first_eq = await store.select("indexed", eq[0])
        assert first_eq == await store.select("plain", eq[0]), "the index and the scan agree"
        out["live_p99_ms"] = await live_latency(store, data, 1000, live_s)
        # rows a view changes rather than adds (a balance, an owner): the same keys, new values
        changed = rows(n, seed=26)[: min(n, view_events)]
        out["update_rows_per_s_no_index"], _ = await fill(store, "plain", changed)
        out["update_rows_per_s_two_indexes"], _ = await fill(store, "indexed", changed)
        events = min(n, view_events)
        journal = await journal_of(journal_path, data[:events])
        try:  # alternately, twice each: the best of two on a machine whose load moves
            plain: list[tuple[float, float, float]] = []
            indexed: list[tuple[float, float, float]] = []
            for _ in range(2):
                await store.reset(PlainLedgerView.name)
                plain.append(await view_apply(store, journal, PlainLedgerView, events))
                await store.reset(IndexedLedgerView.name)
                indexed.append(await view_apply(store, journal, IndexedLedgerView, events))
            out["view_apply_events_per_s_no_index"] = max(w for w, _, _ in plain)
            out["view_apply_events_per_s_two_indexes"] = max(w for w, _, _ in indexed)
            out["view_apply_events_per_cpu_s_no_index"] = max(c for _, c, _ in plain)
            out["view_apply_events_per_cpu_s_two_indexes"] = max(c for _, c, _ in indexed)
            out["view_apply_events_per_transaction"] = sum(t for _, _, t in plain + indexed) / len(plain + indexed)
        finally:
            await journal.close()
    out["apply_index_cost"] = 1 - out["apply_rows_per_s_two_indexes"] / out["apply_rows_per_s_no_index"]
    out["apply_index_cost_cpu"] = 1 - out["apply_rows_per_cpu_s_two_indexes"] / out["apply_rows_per_cpu_s_no_index"]
    cpu_ratio = out["view_apply_events_per_cpu_s_two_indexes"] / out["view_apply_events_per_cpu_s_no_index"]
    out["view_apply_index_cost_cpu"] = 1 - cpu_ratio
    out["view_apply_index_cost"] = (
        1 - out["view_apply_events_per_s_two_indexes"] / out["view_apply_events_per_s_no_index"]
    )
    out["update_index_cost"] = 1 - out["update_rows_per_s_two_indexes"] / out["update_rows_per_s_no_index"]
    out["eq_speedup"] = out["eq_scan_p50_ms"] / out["eq_p50_ms"]
    out["range_speedup"] = out["range_scan_p50_ms"] / out["range_p50_ms"]
    return out


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


def report(name: str, r: dict[str, float]) -> dict[str, Any]:
    c.line(f"{name} apply rows/s, no index", r["apply_rows_per_s_no_index"])
    c.line(f"{name} apply rows/s, two indexes", r["apply_rows_per_s_two_indexes"])
    c.line(f"{name} update rows/s, no index", r["update_rows_per_s_no_index"])
    c.line(f"{name} update rows/s, two indexes", r["update_rows_per_s_two_indexes"])
    c.line(f"{name} view apply events/s, no index", r["view_apply_events_per_s_no_index"])
    c.line(f"{name} view apply events/s, two indexes", r["view_apply_events_per_s_two_indexes"])
    c.line(f"{name} view apply events per transaction (mean)", r["view_apply_events_per_transaction"])
    c.line(
        f"{name} index cost by this process's CPU: store / view",
        f"{r['apply_index_cost_cpu']:.3f} / {r['view_apply_index_cost_cpu']:.3f}",
    )
    c.line(f"{name} equality p50 / p99 (ms)", f"{r['eq_p50_ms']:.3f} / {r['eq_p99_ms']:.3f}")
    c.line(f"{name} equality as a scan p50 / p99 (ms)", f"{r['eq_scan_p50_ms']:.1f} / {r['eq_scan_p99_ms']:.1f}")
    c.line(f"{name} range+order+limit p50 / p99 (ms)", f"{r['range_p50_ms']:.3f} / {r['range_p99_ms']:.3f}")
    c.line(f"{name} range as a scan p50 / p99 (ms)", f"{r['range_scan_p50_ms']:.1f} / {r['range_scan_p99_ms']:.1f}")
    c.line(f"{name} live query event p99 (ms)", f"{r['live_p99_ms']:.2f}")
    c.goal(f"{name} indexed p99 ms", max(r["eq_p99_ms"], r["range_p99_ms"]), "<=", 5)
    c.goal(f"{name} speed-up over the scan", min(r["eq_speedup"], r["range_speedup"]), ">=", 100)
    c.goal(f"{name} apply cost of two indexes, the store alone", r["apply_index_cost"], "<=", 0.20)
    c.goal(f"{name} apply cost of two indexes, the view", r["view_apply_index_cost"], "<=", 0.20)
    c.goal(f"{name} live p99 ms", r["live_p99_ms"], "<=", 50)
    return {f"{name}_{k}": v for k, v in r.items()}


def main() -> None:
    tune_gc()
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int)
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("MEMOIR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--no-postgres", action="store_true", help="SQLite only")
    p.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = c.parse(p)
    n = args.rows or (20_000 if args.quick else 1_000_000)
    queries, scans, live_s = (200, 10, 2.0) if args.quick else (1000, 10, 10.0)
    view_events = 20_000 if args.quick else VIEW_EVENTS
    stores = ", ".join(
        name for name, skip in (("SQLite", args.no_sqlite), ("PostgreSQL", args.no_postgres)) if not skip
    )
    print(f"view queries: {n:,} rows, {queries} indexed queries, {scans} scans each ({stores})", flush=True)
    fields: dict[str, Any] = {"rows": n, "view_events": min(n, view_events)}
    if not args.no_sqlite:
        with c.scratch_dir() as d:
            r = c.run(
                bench_store, lambda: SqliteViewStore(d / "views.db"), n, queries, scans, live_s, d / "j.db", view_events
            )
            fields.update(report("sqlite", r))
    if not args.no_postgres:
        schema = f"bench_vq_{os.getpid()}"
        with c.scratch_dir() as d:
            try:
                r = c.run(
                    bench_store,
                    lambda: PostgresViewStore(f"{args.postgres_url}?schema={schema}"),
                    n,
                    queries,
                    scans,
                    live_s,
                    d / "j.db",
                    view_events,
                )
                fields.update(report("postgres", r))
            finally:
                c.run(drop_schema, args.postgres_url, schema)
    c.finish(fields)


if __name__ == "__main__":
    main()
