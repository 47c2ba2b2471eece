"""What owning shards costs a cluster member: idle CPU and KV writes at 256 and 1,024 shards, and
whether lease renewal keeps up on an event loop saturated with work.

Two members (each its own process, ShardManager only: no journal, no commands) on one embedded
nats-server. Idle: each member's CPU (utime + stime from /proc) and the KV writes of the leases
and members buckets (their streams' last sequence) over a window, once the shards are placed.
Saturated: one member whose event loop runs `--busy-tasks` tasks that each burn `--slice-ms` of
CPU between checkpoints (the loop is never idle; one pass over the ready tasks takes about
tasks x slice), for `--saturate` seconds; it reports the shards it lost (lease lapses).

Baselines in the same run: the idle CPU of a process that only holds a NATS connection; with
`--compare-loop`, the saturated runs again with the renewal on the event loop (no thread).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _common as c  # puts the repository on sys.path
import anyio
import anyio.lowlevel
import structlog

from runtime.serve.service.cluster import Cluster, ClusterConfig, LeaseConfig, ShardManager, settled
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.wire.nats import close_quietly, connect

TTL = 3.0  # the default lease ttl


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ = 100)


async def member(
    url: str, name: str, shards: int, busy_tasks: int, slice_ms: float, seconds: float, on_thread: bool = True
) -> None:
    """A member process: hold shards; with busy tasks, saturate the loop for `seconds`, then report."""
    nc = await connect(url, name=name, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    if name == "none":  # the baseline: a connection only
        print("ready", flush=True)
        await anyio.sleep_forever()
    config = ClusterConfig(name=f"own{shards}", shards=shards, lease=LeaseConfig(ttl=TTL), renew_on_thread=on_thread)
    async with Cluster.join(nc, config, member_id=name) as cluster, ShardManager(cluster) as manager:
        print("ready", flush=True)
        if not busy_tasks:
            await anyio.sleep_forever()
        await anyio.sleep(TTL)  # let the placement settle before the load
        losses, renewals = manager.losses, cluster.leases.renewals
        worst = 0.0

        async def burn(until: float) -> None:
            while time.monotonic() < until:
                spin = time.perf_counter() + slice_ms / 1000
                while time.perf_counter() < spin:
                    pass
                await anyio.lowlevel.checkpoint()

        async def lag(until: float) -> None:  # how late a timer fires on this loop: the renewal's wait
            nonlocal worst
            while time.monotonic() < until:
                asked = time.monotonic()
                await anyio.sleep(0.1)
                worst = max(worst, time.monotonic() - asked - 0.1)

        until = time.monotonic() + seconds
        async with anyio.create_task_group() as tg:
            for _ in range(busy_tasks):
                tg.start_soon(burn, until)
            tg.start_soon(lag, until)
        report = {
            "losses": manager.losses - losses,
            "renewals": cluster.leases.renewals - renewals,
            "held": len(manager.held()),
            "worst_timer_lag_s": round(worst, 3),
        }
        print(json.dumps(report), flush=True)
        await anyio.sleep_forever()
    await close_quietly(nc)


def spawn(
    url: str, name: str, shards: int, busy: int = 0, slice_ms: float = 0.0, seconds: float = 0.0, on_thread: bool = True
) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "member", url, name, str(shards), str(busy), str(slice_ms), str(seconds)]
    argv.append("thread" if on_thread else "loop")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", f"{name} did not start"
    return proc


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
        p.wait()


async def kv_messages(url: str, name: str) -> int:
    nc = await connect(url)
    try:
        js = nc.jetstream()
        return sum([(await js.stream_info(f"KV_{name}_{b}")).state.last_seq for b in ("leases", "members")])
    finally:
        await close_quietly(nc)


async def idle(url: str, shards: int, window: float) -> dict[str, float]:
    procs = [spawn(url, f"m{i}", shards) for i in range(2)]
    try:
        config = ClusterConfig(name=f"own{shards}", shards=shards, lease=LeaseConfig(ttl=TTL))
        nc = await connect(url)
        try:
            await settled(nc, config, 2, timeout=60)
        finally:
            await close_quietly(nc)
        await anyio.sleep(TTL)  # placement done: what follows is the steady, idle state
        cpu0, kv0, t0 = [cpu_seconds(p.pid) for p in procs], await kv_messages(url, config.name), time.monotonic()
        await anyio.sleep(window)
        cpu1, kv1, t1 = [cpu_seconds(p.pid) for p in procs], await kv_messages(url, config.name), time.monotonic()
    finally:
        stop(procs)
    elapsed = t1 - t0
    pct = [100 * (b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
    writes = (kv1 - kv0) / elapsed
    return {"idle_cpu_pct": max(pct), "kv_writes_per_s": writes, "kv_writes_per_member_per_ttl": writes * TTL / 2}


async def baseline(url: str, window: float) -> float:
    proc = spawn(url, "none", 0)
    try:
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await anyio.sleep(window)
        return 100 * (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        stop([proc])


def saturated(url: str, busy: int, slice_ms: float, seconds: float, on_thread: bool) -> dict[str, float]:
    procs = [spawn(url, "m0", 256), spawn(url, "m1", 256, busy, slice_ms, seconds, on_thread)]
    try:
        out = procs[1].stdout
        assert out is not None
        return dict(json.loads(out.readline()))
    finally:
        stop(procs)


async def main() -> None:
    p = c.parser(__doc__ or "")
    p.add_argument("--window", type=float, default=10.0, help="seconds of idle measured")
    p.add_argument("--saturate", type=float, default=60.0, help="seconds of a saturated loop")
    p.add_argument("--busy-tasks", type=int, default=64)
    p.add_argument("--slice-ms", type=float, default=1.0)
    p.add_argument("--compare-loop", action="store_true", help="also renew on the event loop (the baseline)")
    args = c.parse(p)
    window = 4.0 if args.quick else args.window
    seconds = 15.0 if args.quick else args.saturate
    fields: dict[str, object] = {}
    with c.scratch_dir() as tmp:
        async with EmbeddedNats(tmp / "nats") as server:
            fields["baseline_idle_cpu_pct"] = await baseline(server.url, window)
            c.line("idle CPU, a NATS connection only", round(float(fields["baseline_idle_cpu_pct"]), 2), "%")  # type: ignore[arg-type]
            for shards in (256, 1024):
                got = await idle(server.url, shards, window)
                for k, v in got.items():
                    fields[f"{k}_{shards}"] = v
                    c.line(f"{k} at {shards} shards", round(v, 2))
            for where in ("thread", "loop") if args.compare_loop else ("thread",):
                for slice_ms in (args.slice_ms, args.slice_ms * 10):
                    got = await anyio.to_thread.run_sync(
                        saturated, server.url, args.busy_tasks, slice_ms, seconds, where == "thread"
                    )
                    c.line(f"renewal on the {where}, {seconds:g} s of {args.busy_tasks} tasks x {slice_ms:g} ms", got)
                    fields[f"saturated_{where}_{slice_ms:g}ms"] = got
    c.finish(fields)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        url, name, shards, busy, slice_ms, seconds, where = sys.argv[2:]
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says `ready`
        anyio.run(member, url, name, int(shards), int(busy), float(slice_ms), float(seconds), where == "thread")
    else:
        c.run(main)
