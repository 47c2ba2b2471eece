"""Workflows and timers: transfers completed per second beside the same commands sent by a plain
client, and timer lateness at 1,000 timers per second.

Both transfers go over NATS from one client with 64 in flight: the plain one is three requests in
sequence (withdraw, deposit, and a read of the target to confirm); the workflow is one request
(`start`), after which the runtime runs the withdraw and deposit steps itself, each recorded.
A workflow counts once its `Ended` event is in the journal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import msgspec

from entities.bank import Account, Transfer
from runtime import App, Effect, EventSourcedEntity, Journal, SqliteJournal, applies, command
from runtime.model.timer_events import SCHEDULED
from runtime.serve.process.tuning import tune_gc, tune_nats
from runtime.serve.service._service import Service
from runtime.serve.service.client import Client
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.serve.service.nats_door import NatsDoor

ACCOUNTS, CONCURRENCY = 200, 64


class Set(msgspec.Struct, frozen=True):
    pass


class Rang(msgspec.Struct, frozen=True):
    pass


class Alarm(EventSourcedEntity[int], name="alarm"):
    initial = 0

    @command
    def set(self, n: int, after: float) -> Effect[None]:
        return self.persist(Set()).schedule("ring", after=after, to=("alarm", self.entity_id, "ring"))

    @command
    def ring(self, n: int) -> Effect[int]:
        return self.persist(Rang()).reply(lambda s: s)

    @applies
    def was_set(self, n: int, e: Set) -> int:
        return n

    @applies
    def rang(self, n: int, e: Rang) -> int:
        return n + 1


APP = App("bench", entities=[Account, Transfer, Alarm])


async def count_events(journal: Journal, name: str, want: int, position: int, timeout: float = 120) -> int:
    """Tail the journal until `want` events called `name` are past `position`; returns the last position."""
    seen = 0
    with anyio.fail_after(timeout):
        while seen < want:
            page = await journal.read_all(position + 1, limit=5000)
            if not page:
                await anyio.sleep(0.05)
                continue
            seen += sum(1 for e in page if e.name == name)
            position = page[-1].position
    return position


async def in_parallel(n: int, work: Any) -> None:
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)


async def transfers(client: Client, journal: Journal, n: int, round_: int) -> tuple[float, float]:
    """The same transfer twice over NATS: three commands sent by the client, or one start of a workflow."""

    async def plain(i: int) -> None:
        src, dst = f"a{i % ACCOUNTS}", f"a{(i + 1) % ACCOUNTS}"
        await client.send("account", src, "withdraw", {"amount": 1}, command_id=f"p{round_}-{i}-w")
        await client.send("account", dst, "deposit", {"amount": 1}, command_id=f"p{round_}-{i}-d")
        await client.send("account", dst, "get")

    started = time.perf_counter()
    await in_parallel(n, plain)
    plain_per_s = n / (time.perf_counter() - started)

    position = await journal.last_position()

    async def workflow(i: int) -> None:
        args = {"source": f"a{i % ACCOUNTS}", "target": f"a{(i + 1) % ACCOUNTS}", "amount": 1}
        await client.send("transfer", f"t{round_}-{i}", "start", args)

    started = time.perf_counter()
    await in_parallel(n, workflow)
    await count_events(journal, "Ended", n, position)
    workflows_per_s = n / (time.perf_counter() - started)
    return workflows_per_s, plain_per_s


async def timer_lateness(svc: Service, journal: Journal, rate: int, seconds: float) -> dict[str, float]:
    total = int(rate * seconds)
    position = await journal.last_position()
    started = time.perf_counter()
    senders = 32

    async def sender(k: int) -> None:
        for i in range(k, total, senders):
            await c.sleep_until(started + i / rate)
            await svc.runtime.ask("alarm", f"x{i}", "set", {"after": 1.0})

    async with anyio.create_task_group() as tg:
        for k in range(senders):
            tg.start_soon(sender, k)
    achieved = total / (time.perf_counter() - started)
    await count_events(journal, "Rang", total, position)
    due: dict[str, int] = {}
    late: list[float] = []
    while page := await journal.read_all(position + 1, limit=5000):
        for e in page:
            if e.entity_type != "alarm":
                continue
            if e.name == SCHEDULED:
                due[e.entity_id] = msgspec.json.decode(e.payload)["due"]
            elif e.name == "Rang":
                late.append((e.recorded_at - due[e.entity_id]) / 1e6)
        position = page[-1].position
    return {
        "timers": total,
        "timer_rate": achieved,
        "late_p50": c.percentile(late, 50),
        "late_p99": c.percentile(late, 99),
        "early": sum(1 for x in late if x < 0),
    }


async def run(n: int, rounds: int, timer_seconds: float) -> dict[str, Any]:
    with c.scratch_dir() as d:
        async with (
            EmbeddedNats(Path(d) / "nats") as server,
            SqliteJournal(Path(d) / "journal.db") as journal,
            Service(APP, journal, nats_url=server.url) as svc,
            anyio.create_task_group() as tg,
        ):
            assert svc.nc is not None
            transport = NatsDoor(svc.runtime, svc.nc, prefix=svc.prefix, workers=256)
            await tg.start(transport.run)
            async with Client(server.url) as client:
                for a in range(ACCOUNTS):
                    await client.send("account", f"a{a}", "deposit", {"amount": 1_000_000})
                wf, plain = [], []
                for r in range(rounds):  # side by side, alternating: the machine's noise hits both
                    w, p = await transfers(client, journal, n, r)
                    wf.append(w)
                    plain.append(p)
            if svc.publisher is not None:  # the transfers' backlog published first: timers measured on their own
                await svc.publisher.flush(60)
            timers = await timer_lateness(svc, journal, 1000, timer_seconds)
            await transport.stop_taking()
            await transport.stop()
    ratios = sorted(w / p for w, p in zip(wf, plain, strict=True))
    return {
        "workflows_per_s": c.percentile(wf, 50),
        "plain_per_s": c.percentile(plain, 50),
        "ratio": ratios[len(ratios) // 2],
        **timers,
    }


def main() -> None:
    tune_gc()
    tune_nats()
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--transfers", type=int)
    args = c.parse(p)
    n = args.transfers or (600 if args.quick else 3_000)
    rounds = 3 if args.quick else 5
    timer_seconds = 3.0 if args.quick else 10.0
    print(
        f"workflows: {n:,} transfers x {rounds} rounds, {CONCURRENCY} at a time, beside the same commands sent"
        f" plainly; timers at 1,000/s for {timer_seconds:g}s (SQLite journal, embedded NATS)",
        flush=True,
    )
    r = c.run(run, n, rounds, timer_seconds)
    ratio = r["ratio"]  # the median of the rounds' ratios
    c.line("transfer workflows completed/s (1 start)", r["workflows_per_s"])
    c.line("plain client transfers/s (withdraw, deposit, get)", r["plain_per_s"])
    c.line("ratio vs plain", f"{ratio:.2f}x")
    c.line("timers scheduled/s achieved", r["timer_rate"])
    c.line("timer lateness p50 / p99 (ms)", f"{r['late_p50']:.1f} / {r['late_p99']:.1f}")
    c.line("timers fired early", r["early"])
    c.goal("ratio vs plain", ratio, ">=", 0.7)
    c.goal("timer lateness p99 ms", r["late_p99"], "<=", 100)
    c.finish(
        {
            "transfers": n,
            "workflows_per_s": r["workflows_per_s"],
            "plain_per_s": r["plain_per_s"],
            "ratio_vs_plain": ratio,
            "timers": r["timers"],
            "timer_rate_achieved": r["timer_rate"],
            "timer_late_p50_ms": r["late_p50"],
            "timer_late_p99_ms": r["late_p99"],
            "timers_early": r["early"],
        }
    )


if __name__ == "__main__":
    main()
