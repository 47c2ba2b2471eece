"""Regions: replication lag between two NATS clusters joined by gateways, and command latency local vs
cross-region. Two regions of three JetStream nodes each on loopback, a member per region (SQLite
journal). The primary region takes a steady load of commands; the lag of each event is the time
from its recorded time in the primary to its arrival in the other region's replica stream, beside
the same lag into the primary's own replica (the baseline: sourcing without the gateway).
Then one command at a time through the region door, for an entity whose primary is the sender's
region and for one whose primary is the other, beside the same command sent straight to the
member's own prefix (no door). Loopback has no WAN distance: the cross-region numbers are the cost
of the extra hops, not of a continent."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import _common as c  # puts the repository on sys.path
import anyio
import msgspec
from nats.aio.msg import Msg
from nats.js import api

from runtime import App, Client, Effect, EventSourcedEntity, SqliteJournal, applies, command
from runtime.serve.process.local_regions import NatsRegions
from runtime.serve.service.regions import RegionSettings, ReplicaJournal, region_member, replica_stream
from runtime.wire.nats import close_quietly, connect
from runtime.wire.protocol import H_RECORDED

REGIONS = ("eu", "us")


class Added(msgspec.Struct, frozen=True):
    n: int


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Counter(EventSourcedEntity[Count], name="counter"):
    initial = Count()

    @command
    def add(self, s: Count, n: int) -> Effect[int]:
        return self.persist(Added(n)).reply(lambda st: st.n)

    @applies
    def added(self, s: Count, e: Added) -> Count:
        return Count(s.n + e.n)


class Pinned(EventSourcedEntity[Count], name="pinned"):
    """The same entity, pinned to eu."""

    initial = Count()

    @command
    def add(self, s: Count, n: int) -> Effect[int]:
        return self.persist(Added(n)).reply(lambda st: st.n)

    @applies
    def added(self, s: Count, e: Added) -> Count:
        return Count(s.n + e.n)


APP = App("bench", entities=[Counter, Pinned])


class Lags:
    """Arrival lag (ms) of each event from `origin` in one replica stream, from its recorded time."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.ms: list[float] = []
        self.recording = False

    async def handle(self, msg: Msg) -> None:
        now = time.time_ns()
        if self.recording and (recorded := (msg.headers or {}).get(H_RECORDED)):
            self.ms.append((now - int(recorded)) / 1e6)


async def follow(nc: object, stream: str, lags: Lags) -> object:
    js = nc.jetstream()  # type: ignore[attr-defined]
    return await js.subscribe(
        "bench.events.pinned.*",
        stream=stream,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.NEW,
        cb=lags.handle,
    )


async def steady_load(client: Client, rate: float, seconds: float, ids: int = 50) -> tuple[int, int]:
    """`rate` commands/s for `seconds`, paced, many in flight; returns (acknowledged, errors)."""
    done = errors = 0
    total = int(rate * seconds)
    start = time.perf_counter()
    limit = anyio.CapacityLimiter(256)

    async def one(i: int) -> None:
        nonlocal done, errors
        async with limit:
            try:
                await client.send("pinned", f"p{i % ids}", "add", {"n": 1}, timeout=10)
                done += 1
            except Exception:  # noqa: BLE001 - counted
                errors += 1

    async with anyio.create_task_group() as tg:
        for i in range(total):
            await c.sleep_until(start + i / rate)
            tg.start_soon(one, i)
    return done, errors


async def loss(
    nats: NatsRegions, eu: Client, replica: ReplicaJournal, journal: SqliteJournal, rate: float, before: float
) -> tuple[int, float, int, int]:
    """The RPO of losing eu under load: eu's NATS nodes all paused (SIGSTOP) after `before` seconds of
    `rate` commands/s; then the acknowledged events us's replica never got. Returns (events lost, the
    age in ms of the oldest lost one at the moment of the loss, events acknowledged, events in eu's
    journal us lacks, acknowledged or not). eu is resumed (SIGCONT) afterwards."""
    ids = 50
    acks: dict[tuple[str, int], float] = {}

    async def one(i: int) -> None:
        entity_id = f"q{i % ids}"
        with contextlib.suppress(Exception):
            reply = await eu.send("pinned", entity_id, "add", {"n": 1}, timeout=5)
            acks[(entity_id, reply.seq)] = time.time()

    nodes = nats.regions["eu"].nodes
    try:
        async with anyio.create_task_group() as tg:
            start = time.perf_counter()
            for i in range(int(rate * before)):
                await c.sleep_until(start + i / rate)
                tg.start_soon(one, i)
            for node in nodes:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGSTOP)
            lost_at, acked = time.time(), dict(acks)
            tg.cancel_scope.cancel()
        await anyio.sleep(3.0)  # what was already on its way arrives
        have = {(f"q{k}", e.seq) for k in range(ids) for e in await replica.read("pinned", f"q{k}")}
        stored = {(f"q{k}", e.seq) for k in range(ids) for e in await journal.read("pinned", f"q{k}")}
    finally:
        for node in nodes:
            if node.proc is not None:
                node.proc.send_signal(signal.SIGCONT)
    missing = [when for key, when in acked.items() if key not in have]
    return len(missing), (lost_at - min(missing)) * 1000 if missing else 0.0, len(acked), len(stored - have)


async def latencies(sends: list[tuple[Client, str, str]], n: int) -> list[list[float]]:
    """`n` rounds of one command to each target in turn (interleaved: the machine's drift hits all alike)."""
    out: list[list[float]] = [[] for _ in sends]
    for _ in range(n):
        for k, (client, entity_type, entity_id) in enumerate(sends):
            t0 = time.perf_counter()
            await client.send(entity_type, entity_id, "add", {"n": 1}, timeout=10)
            out[k].append((time.perf_counter() - t0) * 1000)
    return out


async def main(quick: bool) -> None:
    rate, seconds, n = (1000.0, 8.0, 200) if quick else (1000.0, 60.0, 2000)
    print(f"regions: 2 regions x 3 nodes on loopback, load {rate:g} events/s for {seconds:g}s; {n} sequential commands")
    with c.scratch_dir() as d:
        async with NatsRegions(Path(d) / "nats", list(REGIONS)) as nats, contextlib.AsyncExitStack() as stack:
            ncs = {r: await connect(nats.url(r), timeout=10) for r in REGIONS}
            for nc in ncs.values():
                stack.push_async_callback(close_quietly, nc)
            members = {}
            for r in REGIONS:
                s = RegionSettings(name=r, regions=REGIONS, pinned={"pinned": "eu"}, prefix="bench")
                journal = await stack.enter_async_context(SqliteJournal(Path(d) / f"{r}.db"))
                members[r] = await stack.enter_async_context(region_member(APP, journal, ncs[r], s))
            s_eu = RegionSettings(name="eu", regions=REGIONS, prefix="bench")
            remote, local = Lags("eu"), Lags("eu")
            await follow(ncs["us"], replica_stream(s_eu, "us"), remote)
            await follow(ncs["eu"], replica_stream(s_eu, "eu"), local)
            async with (
                Client(nats.url("eu"), prefix="bench.r.eu", direct=False) as eu_member,
                Client(nats.url("us"), prefix="bench", direct=False) as us_door,
                Client(nats.url("us"), prefix="bench.r.us", direct=False) as us_member,
            ):
                await steady_load(eu_member, 200, 1.0)  # warm up: activations, sources, consumers
                await anyio.sleep(3.0)  # the warm-up's events arrive before recording starts
                remote.recording = local.recording = True
                t0 = time.perf_counter()
                done, errors = await steady_load(eu_member, rate, seconds)
                achieved = done / (time.perf_counter() - t0)
                await anyio.sleep(2.0)  # the last events arrive
                remote.recording = local.recording = False
                await us_door.send("counter", "mine", "add", {"n": 1})  # first write in us: us's
                sends = [(us_member, "counter", "mine"), (us_door, "counter", "mine"), (us_door, "pinned", "far")]
                await latencies(sends, 10)  # warm up
                direct, via_door, cross = await latencies(sends, n)
                us_replica = members["us"].region.journal
                assert us_replica is not None
                eu_journal = members["eu"].service.journal
                assert isinstance(eu_journal, SqliteJournal)
                lost, rpo_ms, acked, unreplicated = await loss(nats, eu_member, us_replica, eu_journal, rate, 3.0)
    p = c.percentile
    c.line("load: events/s acknowledged (errors)", f"{achieved:,.0f} ({errors})")
    c.line("replication lag eu -> us p50 / p99 (ms)", f"{p(remote.ms, 50):.1f} / {p(remote.ms, 99):.1f}")
    c.line("baseline: eu -> eu's own replica p50 / p99 (ms)", f"{p(local.ms, 50):.1f} / {p(local.ms, 99):.1f}")
    c.line("events seen in us / in eu", f"{len(remote.ms)} / {len(local.ms)}")
    lag_ratio = p(remote.ms, 99) / max(p(local.ms, 99), 0.001)
    c.line("lag ratio p99 cross-region / same region", f"{lag_ratio:.2f}x")
    c.line("command p50 / p99 (ms): member prefix, no door", f"{p(direct, 50):.2f} / {p(direct, 99):.2f}")
    c.line("command p50 / p99 (ms): door, primary here", f"{p(via_door, 50):.2f} / {p(via_door, 99):.2f}")
    c.line("command p50 / p99 (ms): door, primary in eu", f"{p(cross, 50):.2f} / {p(cross, 99):.2f}")
    cross_ratio = p(cross, 50) / max(p(via_door, 50), 0.001)
    c.line("cross-region / local command p50", f"{cross_ratio:.2f}x")
    c.line("eu lost under load (its NATS nodes paused): acked events us lacks", f"{lost} of {acked}")
    c.line("events in eu's journal us lacks (acknowledged or not)", unreplicated)
    c.line("RPO: age of the oldest of them at the loss (ms)", f"{rpo_ms:.0f}")
    c.goal("replication lag p99 ms at 1,000 events/s", p(remote.ms, 99), "<=", 1000)
    c.finish(
        {
            "bench": "regions",
            "quick": quick,
            "rate": round(achieved, 1),
            "errors": errors,
            "lag_p50_ms": p(remote.ms, 50),
            "lag_p99_ms": p(remote.ms, 99),
            "local_lag_p50_ms": p(local.ms, 50),
            "local_lag_p99_ms": p(local.ms, 99),
            "lag_ratio_p99": lag_ratio,
            "events_remote": len(remote.ms),
            "cmd_direct_p50_ms": p(direct, 50),
            "cmd_local_p50_ms": p(via_door, 50),
            "cmd_local_p99_ms": p(via_door, 99),
            "cmd_cross_p50_ms": p(cross, 50),
            "cmd_cross_p99_ms": p(cross, 99),
            "cross_ratio_p50": cross_ratio,
            "rpo_events": lost,
            "rpo_ms": rpo_ms,
            "rpo_acked": acked,
            "unreplicated": unreplicated,
        }
    )


if __name__ == "__main__":
    args = c.parse(c.parser(__doc__.splitlines()[0]))
    c.run(main, args.quick)
