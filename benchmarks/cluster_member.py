"""What one `memoir run --cluster` member costs idle (at 256 and 1,024 shards), and `--soak`: whether
a member saturated at its CPU cap keeps its membership and its shards.

Idle: each process gets a fresh prefix (and PostgreSQL schema), is started, settled (the member
holds every shard), left alone for a moment, and then its CPU time is read from `/proc/<pid>/stat`
(user + system, every thread) at the start and the end of a quiet window, with the nats-server's
over the same window. Nothing is sent meanwhile. Baseline in the same run: an idle plain
`memoir run` (no cluster) on the same journal and NATS server. `--before DIR` also runs each
configuration from another checkout (a `git worktree` of an older commit), interleaved with this
one, so before and after meet the same machine state, and prints after/before ratios.

`--soak`: one member in a cgroup capped at a quarter of a core (`--cap`; `_cgroup.py`), driven past its cap
by uncapped client processes (Memoir's `Client`, as cluster.py's capped mode) for 60 s (`--quick`:
20 s) while an observer checks every half second that it is live and holds every shard. It prints
the member's lease losses (its metric), the observer's misses, how much of its cap it used and how
often it was throttled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import cluster as bench_cluster
from _cgroup import Caps

from runtime.serve.service.embedded_nats import find_binary, free_port

TICK = os.sysconf("SC_CLK_TCK")
SOAK_CAP = 0.25  # of a core


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _postgres_url() -> str | None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return os.environ.get("MEMOIR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    except OSError:
        return None


async def _settled(url: str, prefix: str, shards: int) -> None:
    from runtime.serve.service.cluster import ClusterConfig, settled
    from runtime.wire.nats import close_quietly, connect

    nc = await connect(url)
    try:
        await settled(nc, ClusterConfig(name=prefix, shards=shards), 1, timeout=60)
    finally:
        await close_quietly(nc)


async def _drop_schema(pg: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@contextmanager
def nats_server(d: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    server = subprocess.Popen(
        [find_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(d / "js")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    try:
        yield f"nats://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        server.wait(10)


def start_member(
    url: str,
    journal: str,
    data: Path,
    prefix: str,
    code: Path,
    shards: int,
    *,
    wrap: list[str] | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """`memoir run` from `code` (a member with `shards`, or plain with 0), inside `wrap` (a cgroup's
    `sh`) if given; returns once it serves."""
    argv = [sys.executable, "-m", "runtime.serve.cli", "run", "--nats-url", url, "--journal", journal]
    argv += ["--data-dir", str(data), "--prefix", prefix, "--log-format", "json", "--log-level", "warning", *args]
    if shards:
        argv += ["--cluster", "--shards", str(shards)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    # cwd: `python -m` puts it first on sys.path, before PYTHONPATH
    proc = subprocess.Popen(
        [*(wrap or []), *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=code
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert ready.startswith("memoir: serving"), f"did not start: {ready!r}"
    return proc


def idle(url: str, server: int, pg: str | None, d: Path, code: Path, shards: int, window: float) -> dict[str, Any]:
    """One process (a cluster member with `shards`, or plain with 0) idle for `window` seconds."""
    prefix = f"idle{shards}x{os.getpid() % 10000}{int(time.time() * 10) % 10000}"
    journal = f"{pg}?schema={prefix}" if pg else f"{url}?prefix={prefix}"
    proc = start_member(url, journal, d / prefix, prefix, code, shards)
    try:
        if shards:
            c.run(_settled, url, prefix, shards)
        time.sleep(3.0)  # start-up work (stream creation, first checkpoints) out of the window
        t0, mine0, nats0 = time.perf_counter(), cpu_s(proc.pid), cpu_s(server)
        time.sleep(window)
        took = time.perf_counter() - t0
        mine, nats = (cpu_s(proc.pid) - mine0) / took * 100, (cpu_s(server) - nats0) / took * 100
    finally:
        proc.terminate()
        status = proc.wait(60)
        if pg:
            c.run(_drop_schema, pg, prefix)
    return {"cpu_pct": mine, "nats_cpu_pct": nats, "exit_status": status}


def idle_main(quick: bool, window: float | None, before: Path | None) -> None:
    window = window or (8.0 if quick else 30.0)
    pg = _postgres_url()
    codes = {"after": c.ROOT, **({"before": before} if before else {})}
    print(f"cluster_member idle: one idle process at a time, {window:g}s windows; code {codes}", flush=True)
    print(f"  journal: {'PostgreSQL' if pg else 'JetStream'}; the machine may be shared", flush=True)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    configs = (0, 256, 1024)
    with c.scratch_dir() as d, nats_server(d) as (url, server):
        for shards in configs:
            for name, code in codes.items():  # interleaved: before and after meet the same machine state
                out[name, shards] = r = idle(url, server, pg, d, code, shards, window)
                what = f"member, {shards} shards" if shards else "plain runtime (baseline)"
                c.line(f"{name}: {what}: CPU %", f"{r['cpu_pct']:.2f}")
                c.line(f"  {name}: nats-server meanwhile: CPU %", f"{r['nats_cpu_pct']:.2f}")
    fields: dict[str, Any] = {"mode": "idle", "journal": "postgres" if pg else "nats", "window_s": window}
    for name in codes:
        tag = "" if name == "after" else "_before"
        fields[f"idle_cpu_pct_plain{tag}"] = out[name, 0]["cpu_pct"]
        for shards in configs[1:]:
            fields[f"idle_cpu_pct_{shards}{tag}"] = out[name, shards]["cpu_pct"]
            fields[f"nats_cpu_pct_{shards}{tag}"] = out[name, shards]["nats_cpu_pct"]
    if before:
        for shards in configs[1:]:
            ratio = out["after", shards]["cpu_pct"] / max(0.01, out["before", shards]["cpu_pct"])
            fields[f"after_vs_before_{shards}"] = ratio
            c.line(f"after / before at {shards} shards", f"{ratio:.2f}x")
    fields["vs_plain_256"] = out["after", 256]["cpu_pct"] / max(0.01, out["after", 0]["cpu_pct"])
    c.goal("idle member CPU % at 256 shards", out["after", 256]["cpu_pct"], "<=", 1)
    c.goal("idle member CPU % at 1024 shards", out["after", 1024]["cpu_pct"], "<=", 1)
    fields["exit_statuses"] = [o["exit_status"] for o in out.values()]
    c.finish(fields)


# -- soak: a member at its cap keeps its membership and its shards ---------------------------------------


async def _observe(url: str, prefix: str, seconds: float, shards: int) -> dict[str, int]:
    """Every half second: is the member live, and does it hold every shard? Counts the misses."""
    from runtime.serve.service.cluster import ClusterConfig, snapshot
    from runtime.wire.nats import close_quietly, connect

    config = ClusterConfig(name=prefix, shards=shards)
    nc = await connect(url)
    checks = not_live = unowned = failed = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            checks += 1
            try:
                with anyio.fail_after(5):
                    snap = await snapshot(nc, config)
            except Exception:  # noqa: BLE001 - NATS itself too busy to answer: counted apart
                failed += 1
            else:
                live = [m for m in snap.members if m.heartbeat_age_s < config.lease.ttl]
                not_live += not live
                unowned += bool(snap.unowned_shards)
            await anyio.sleep(0.5)
    finally:
        await close_quietly(nc)
    return {"checks": checks, "not_live": not_live, "unowned": unowned, "observer_failed": failed}


def soak(caps: Caps, pg: str | None, code: Path, cap: float, seconds: float, shards: int = 256) -> dict[str, Any]:
    """One member from `code`, capped at `cap` cores, under the load for `seconds`; its own NATS server."""
    prefix = f"soak{os.getpid() % 10000}{int(time.time() * 10) % 10000}"
    port = free_port()
    group = caps.make(f"memoir-soak-{prefix}", cap)
    out: dict[str, Any] = {}
    with c.scratch_dir() as d, nats_server(d) as (url, _server):
        journal = f"{pg}?schema={prefix}" if pg else f"{url}?prefix={prefix}"
        metrics = ("--metrics-port", str(port))
        proc = start_member(url, journal, d / prefix, prefix, code, shards, wrap=caps.wrap(group, []), args=metrics)
        try:
            c.run(_settled, url, prefix, shards)
            bench_cluster._load(url, prefix, 2.0)  # warm up: activations, the clients' shard maps
            m0, cpu0, periods0 = bench_cluster._metrics(port), caps.usage_us(group), _periods(caps, group)
            t0 = time.perf_counter()
            with subprocess.Popen(
                [sys.executable, __file__, "--observe", url, prefix, str(seconds), str(shards)],
                stdout=subprocess.PIPE,
                text=True,
            ) as observer:
                load = bench_cluster._load(url, prefix, seconds)
                seen = json.loads((observer.communicate()[0] or "{}").strip().splitlines()[-1])
            took = time.perf_counter() - t0
            m1 = bench_cluster._metrics(port)
            out = {
                "per_s": load["per_s"],
                "errors": load["errors"],
                "ownership_losses": m1["losses"] - m0["losses"],
                **seen,
                "cap_used": (caps.usage_us(group) - cpu0) / 1e6 / took / cap,
                "throttled_pct": _throttled_pct(periods0, _periods(caps, group)),
            }
        finally:
            proc.terminate()
            out["exit_status"] = proc.wait(60)
            caps.cleanup()
            if pg:
                c.run(_drop_schema, pg, prefix)
    return out


def soak_main(quick: bool, cap: float, before: Path | None) -> None:
    caps = Caps.find()
    if isinstance(caps, str):
        print(f"cluster_member --soak: {caps}", flush=True)
        c.finish({"mode": "soak", "capped": False, "cgroup": caps})
        return
    seconds = 20.0 if quick else 60.0
    pg = _postgres_url()
    codes = {**({"before": before} if before else {}), "after": c.ROOT}
    print(f"cluster_member --soak: one member at {cap:g} core ({caps.what}), {seconds:g}s of load", flush=True)
    print(f"  journal: {'PostgreSQL' if pg else 'JetStream'}; code {codes}; the machine may be shared", flush=True)
    fields: dict[str, Any] = {"mode": "soak", "cgroup": caps.version, "cap_cores": cap, "soak_s": seconds}
    for name, code in codes.items():
        out = soak(caps, pg, code, cap, seconds)
        seen = f"{out['not_live']} / {out['unowned']} / {out['checks']}"
        c.line(f"{name}: commands/s at the cap", out["per_s"])
        c.line(f"{name}: share of the cap used", f"{out['cap_used']:.2f}")
        c.line(f"{name}: periods throttled %", out["throttled_pct"])
        c.line(f"{name}: ownership losses (lease lapses)", out["ownership_losses"])
        c.line(f"{name}: observer: not live / shards unowned / checks", seen)
        fields.update({k if name == "after" else f"{k}_before": v for k, v in out.items()})
    c.goal("ownership_losses", fields["ownership_losses"], "<=", 0)
    c.goal("observer saw the member not live", fields["not_live"], "<=", 0)
    c.finish(fields)


def _periods(caps: Caps, group: str) -> tuple[int, int]:
    """(periods, throttled periods) of the group so far: v1 and v2 both keep them in cpu.stat."""
    stat = dict(row.split()[:2] for row in (caps.cpu_root / group / "cpu.stat").read_text().splitlines())
    return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))


def _throttled_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the scheduler periods between two readings in which the group hit its cap."""
    periods = after[0] - before[0]
    return round(100 * (after[1] - before[1]) / periods, 1) if periods else 0.0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--observe":
        url, prefix, seconds, shards = sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(c.run(_observe, url, prefix, seconds, shards)), flush=True)
        return
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, default=None, help="also run the members from this checkout (a worktree)")
    p.add_argument("--window", type=float, default=None, help="idle seconds measured per process (30; --quick 8)")
    p.add_argument("--soak", action="store_true", help="one member capped at a quarter core, saturated for 60 s")
    p.add_argument("--cap", type=float, default=SOAK_CAP, help="--soak: the member's cap in cores (0.25)")
    args = c.parse(p)
    if args.soak:
        soak_main(args.quick, args.cap, args.before)
    else:
        idle_main(args.quick, args.window, args.before)


if __name__ == "__main__":
    main()
