"""Scale-out: commands/s over NATS with 1 and with 2 `memoir run --cluster` processes on one journal,
the forwarding hop's cost, and failover time (SIGKILL → every entity answers again).

Baseline in the same run: one plain `memoir run` (no cluster: no routing, no leases) on the same
journal and NATS server. The client processes and the load are those of nats_commands.py.

`--capped` (the scaling measurement that does not depend on the machine's cores): 1, then 2, then
3 members, each in a cgroup of its own capped at a quarter of a core from its first instruction
(`_cgroup.py`: v1 or v2, whichever is writable; it says which, or that neither is), under the
same load from uncapped client processes using Memoir's `Client` (it follows the shard map; 2 x 128
requests in flight, so that every member has queued work; the caps' period is 10 ms, see _cgroup.py).
Each phase has a fresh prefix and schema; it measures the members idle (cgroup CPU use over
5 s, once the singletons have spread over the members; with --quick in the 3-member phase only),
then under load: commands/s, KV writes/s (the buckets' stream sequences),
forwarded share and lease losses (the members' metrics) and each member's CPU per command.

`--capped --types 2` spreads the same load over two entity types (inventory `receive` and
profile `count_post`, alternately), as a service with several types sees it: the outbox
publisher is one partition per type (a singleton each), so with one loaded type its whole
publishing stays on one member however many there are. The JSON line says `load_types`; the
default (1) is the line measured before the partitions. `singletons_per_member_3` counts the
singleton leases each member holds in the 3-member phase.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import nats_commands as load
from _cgroup import PERIOD_US, Caps

from runtime.serve.service.embedded_nats import find_binary, free_port

ENTITIES = 200
LEASE_TTL = 3.0  # seconds: `memoir run`'s default (--lease-ttl); a member's idle cost and failover time follow it


def _postgres_url() -> str | None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return os.environ.get("MEMOIR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    except OSError:
        return None


def runtime(url: str, journal: str, data: str, *, cluster: bool, prefix: str, ttl: float) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "runtime.serve.cli", "run", "--nats-url", url, "--journal", journal]
    argv += ["--data-dir", data, "--prefix", prefix, "--log-format", "json", "--log-level", "warning"]
    if cluster:
        argv += ["--cluster", "--lease-ttl", str(ttl)]
    return load.start(argv, "memoir: serving", {**os.environ, "PYTHONPATH": str(c.ROOT)})


async def _members(url: str, prefix: str, want: int, ttl: float) -> None:
    from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, settled
    from runtime.wire.nats import close_quietly, connect

    nc = await connect(url)
    try:
        await settled(nc, ClusterConfig(name=prefix, lease=LeaseConfig(ttl=ttl)), want)
    finally:
        await close_quietly(nc)


async def _every_entity_answers(url: str, prefix: str, timeout: float = 30.0) -> float:
    """Seconds until a `get` to every entity has succeeded (each retried until it does)."""
    from runtime import Client, CommandError

    started = time.perf_counter()
    async with Client(url, prefix=prefix) as client:

        async def one(k: int) -> None:
            while time.perf_counter() - started < timeout:
                try:
                    await client.send("inventory", f"SKU-0-{k}", "get", timeout=1.0)
                    return
                except (CommandError, TimeoutError):
                    await anyio.sleep(0.02)
            raise TimeoutError(f"SKU-0-{k} did not answer within {timeout}s")

        async with anyio.create_task_group() as tg:
            for k in range(ENTITIES):
                tg.start_soon(one, k)
    return time.perf_counter() - started


async def _drop_schema(pg: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


# -- capped mode: members in CPU-capped cgroups, 1, 2 and 3 of them under the same load ------------

CAP = 0.25  # of a core, per member
IDLE_S = 5.0  # seconds of the idle window, once the singletons have spread
# requests in flight per client process in --capped mode: enough that 3 capped members all have
# queued work (with 32, the third member sat below its cap while the clients waited on the others)
CAPPED_INFLIGHT = 128


PROFILE_PAYLOAD = b'{"post_id": "p"}'


def client_main(url: str, prefix: str, seconds: float, seed: int, types: int = 1) -> None:
    """One load process: Memoir's `Client` (it follows the shard map), CAPPED_INFLIGHT in flight; with
    `types` 2, every other command goes to a profile instead of an inventory item."""
    from runtime import Client, CommandError

    async def go() -> None:
        done = errors = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        async with Client(url, prefix=prefix) as client:

            async def worker(w: int) -> None:
                nonlocal done, errors
                i = w
                while time.perf_counter() < deadline:
                    i += CAPPED_INFLIGHT
                    try:
                        if types > 1 and (i // CAPPED_INFLIGHT) % 2:
                            key, command, payload = f"P-{seed}-{i % 500}", "count_post", PROFILE_PAYLOAD
                            await client.send("profile", key, command, payload, timeout=10)
                        else:
                            await client.send("inventory", f"SKU-{seed}-{i % 500}", "receive", load.PAYLOAD, timeout=10)
                        done += 1
                    except (CommandError, TimeoutError):
                        errors += 1

            async with anyio.create_task_group() as tg:
                for w in range(CAPPED_INFLIGHT):
                    tg.start_soon(worker, w)
        took, cpu = time.perf_counter() - started, time.process_time()
        print(json.dumps({"done": done, "errors": errors, "seconds": took, "cpu_s": cpu}), flush=True)

    c.run(go)


def _load(url: str, prefix: str, seconds: float, types: int = 1) -> dict[str, float]:
    argv = [sys.executable, __file__, "--client", url, prefix, str(seconds)]
    procs = [
        subprocess.Popen([*argv, str(k), str(types)], stdout=subprocess.PIPE, text=True) for k in range(load.CLIENTS)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    done = sum(r["done"] for r in results)
    errors, took = sum(r["errors"] for r in results), max(r["seconds"] for r in results)
    clients_cores = sum(r["cpu_s"] for r in results) / took  # includes their start: an upper bound
    return {"done": done, "per_s": done / took, "errors": errors, "clients_cores": clients_cores}


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU so far (/proc/stat), to tell a saturated machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _metrics(port: int) -> dict[str, float]:
    """The sums this benchmark needs from one member's Prometheus text."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {"commands": 0.0, "forwards": 0.0, "losses": 0.0}
    names = {"memoir_commands_total": "commands", "memoir_cluster_forwards": "forwards"}
    names["memoir_cluster_lease_losses"] = "losses"
    for row in text.splitlines():
        name = row.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[names[name]] += float(row.rsplit(" ", 1)[1])
    return out


async def _singletons_per_member(url: str, prefix: str, ttl: float) -> list[int]:
    """How many singleton leases each member holds, most first."""
    from collections import Counter

    from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, snapshot
    from runtime.wire.nats import close_quietly, connect

    nc = await connect(url)
    try:
        snap = await snapshot(nc, ClusterConfig(name=prefix, lease=LeaseConfig(ttl=ttl)))
        counts = Counter(lease.owner for lease in snap.singletons.values())
        return sorted([counts.get(m.id, 0) for m in snap.members], reverse=True)
    finally:
        await close_quietly(nc)


async def _singletons_spread(url: str, prefix: str, n: int, ttl: float) -> None:
    """Until the singletons are spread over the n members (within one of each other, the same count
    twice running): a joiner's share moves to it a settle period (the ttl) after it joins."""
    deadline, last = time.monotonic() + 6 * ttl, None
    while time.monotonic() < deadline:
        counts = await _singletons_per_member(url, prefix, ttl)
        if len(counts) == n and counts[0] - counts[-1] <= 1 and counts == last:
            return
        last = counts
        await anyio.sleep(0.5)
    print(f"  (singletons not spread after {6 * ttl:g}s: {last}; idle measured anyway)", flush=True)


async def _kv_messages(url: str, prefix: str) -> int:
    """Messages ever written to the cluster's KV buckets (their streams' last sequence)."""
    from runtime.wire.nats import close_quietly, connect

    nc = await connect(url)
    try:
        js = nc.jetstream()
        total = 0
        for what in ("leases", "members"):
            total += (await js.stream_info(f"KV_{prefix}_{what}")).state.last_seq
        return total
    finally:
        await close_quietly(nc)


def _phase(
    caps: Caps,
    url: str,
    journal_base: str | None,
    d: Path,
    n: int,
    seconds: float,
    types: int = 1,
    cap: float = CAP,
    ttl: float = LEASE_TTL,
    idle_s: float = IDLE_S,
) -> dict[str, Any]:
    """n capped members on a fresh prefix (and schema): idle CPU (over `idle_s`; 0: not measured),
    then the load; all stopped, exit 0."""
    prefix = f"cap{n}x{os.getpid() % 10000}"
    journal = f"{journal_base}?schema={prefix}" if journal_base else f"{url}?prefix={prefix}"
    ports = [free_port() for _ in range(n)]
    groups = [caps.make(f"memoir-bench-{os.getpid()}-{n}-{i}", cap) for i in range(n)]
    procs: list[subprocess.Popen[str]] = []
    out: dict[str, Any] = {}
    try:
        for i in range(n):
            argv = [sys.executable, "-m", "runtime.serve.cli", "run", "--nats-url", url, "--journal", journal]
            argv += ["--data-dir", str(d / f"{prefix}-{i}"), "--prefix", prefix, "--log-format", "json"]
            argv += ["--log-level", "warning", "--cluster", "--lease-ttl", str(ttl)]
            argv += ["--metrics-port", str(ports[i])]
            env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
            procs.append(load.start(caps.wrap(groups[i], argv), "memoir: serving", env))
        c.run(_members, url, prefix, n, ttl)
        if idle_s:  # a member with nothing to do: after the joiners' singletons have moved to them
            c.run(_singletons_spread, url, prefix, n, ttl)
            before = [caps.usage_us(g) for g in groups]
            time.sleep(idle_s)  # the measurement window: nothing is sent
            used = [caps.usage_us(g) - b for g, b in zip(groups, before, strict=True)]
            out["idle_cpu_pct"] = max(u / (idle_s * 1e6) * 100 for u in used)
        _load(url, prefix, 1.0, types)  # warm up: activations, the clients' shard maps
        singletons = c.run(_singletons_per_member, url, prefix, ttl)
        kv0 = c.run(_kv_messages, url, prefix)
        m0 = [_metrics(p) for p in ports]
        cpu0 = [caps.usage_us(g) for g in groups]
        t0, busy0 = time.perf_counter(), _machine_busy()
        result = _load(url, prefix, seconds, types)
        took, busy1 = time.perf_counter() - t0, _machine_busy()
        cpu = [caps.usage_us(g) - u for g, u in zip(groups, cpu0, strict=True)]
        m1 = [_metrics(p) for p in ports]
        kv = c.run(_kv_messages, url, prefix) - kv0
        served = [b["commands"] - a["commands"] for a, b in zip(m0, m1, strict=True)]
        forwards = sum(b["forwards"] - a["forwards"] for a, b in zip(m0, m1, strict=True))
        out |= {
            "per_s": result["per_s"],
            "errors": result["errors"],
            "kv_writes_per_s": kv / took,
            "forwarded_share": forwards / max(1.0, result["done"]),
            "ownership_losses": sum(m["losses"] for m in m1),
            "cpu_us_per_command": [round(u / max(1.0, s)) for u, s in zip(cpu, served, strict=True)],
            "clients_cores": round(result["clients_cores"], 2),
            "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1])),
            "throttled_pct": [round(caps.throttled_pct(g)) for g in groups] if caps.version == "v1" else [],
            "singletons_per_member": singletons,
        }
    finally:
        statuses = []
        for proc in procs:
            proc.terminate()
            statuses.append(proc.wait(60))
        out["exit_statuses"] = statuses
        caps.cleanup()
        if journal_base:
            c.run(_drop_schema, journal_base, prefix)
    return out


def capped(quick: bool, types: int = 1, cap: float = CAP, ttl: float = LEASE_TTL) -> None:
    caps = Caps.find()
    if isinstance(caps, str):
        print(f"cluster --capped: {caps}", flush=True)
        c.finish({"capped": False, "cgroup": caps})
        return
    seconds = 3.0 if quick else 10.0
    pg = _postgres_url()
    print(f"cluster --capped: members at {cap:g} core each, {caps.what}, period {PERIOD_US // 1000} ms", flush=True)
    print(
        f"  load: {load.CLIENTS} client processes (uncapped) x {CAPPED_INFLIGHT} in flight, Memoir's Client,"
        f" over {types} entity type(s)",
        flush=True,
    )
    print(f"  journal: {'PostgreSQL' if pg else 'JetStream'}; {seconds:g}s of load per phase", flush=True)
    phases: dict[int, dict[str, Any]] = {}
    with c.scratch_dir() as d:
        port = free_port()
        server = subprocess.Popen(
            [find_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(d / "js")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"nats://127.0.0.1:{port}"
        time.sleep(0.5)
        try:
            for n in (1, 2, 3):
                # quick: the idle window in the last phase only (the most members, the most to hear)
                idle_s = IDLE_S if not quick or n == 3 else 0.0
                phases[n] = _phase(caps, url, pg, d, n, seconds, types, cap, ttl, idle_s)
                print(f"  {n} member(s): {json.dumps(phases[n])}", flush=True)
        finally:
            caps.cleanup()
            server.terminate()
            server.wait(10)
    per_s = {n: p["per_s"] for n, p in phases.items()}
    fields: dict[str, Any] = {
        "capped": True,
        "cgroup": caps.version,
        "cap_cores": cap,
        "lease_ttl_s": ttl,
        "period_ms": PERIOD_US / 1000,
        "inflight": load.CLIENTS * CAPPED_INFLIGHT,
        "journal": "postgres" if pg else "nats",
        "load_types": types,
        "per_s_1": per_s[1],
        "per_s_2": per_s[2],
        "per_s_3": per_s[3],
        "scaling_2": per_s[2] / per_s[1],
        "scaling_3": per_s[3] / per_s[1],
        "idle_cpu_pct": max(p["idle_cpu_pct"] for p in phases.values() if "idle_cpu_pct" in p),
        "kv_writes_per_s": phases[3]["kv_writes_per_s"],
        "forwarded_share": max(p["forwarded_share"] for p in phases.values()),
        "ownership_losses": sum(p["ownership_losses"] for p in phases.values()),
        "cpu_us_per_command_1": phases[1]["cpu_us_per_command"],
        "cpu_us_per_command_2": phases[2]["cpu_us_per_command"],
        "cpu_us_per_command_3": phases[3]["cpu_us_per_command"],
        "throttled_pct_3": phases[3]["throttled_pct"],
        "singletons_per_member_3": phases[3]["singletons_per_member"],
        "machine_busy_pct": [phases[n]["machine_busy_pct"] for n in (1, 2, 3)],
        "clients_cores": [phases[n]["clients_cores"] for n in (1, 2, 3)],
        "errors": sum(p["errors"] for p in phases.values()),
        "exit_statuses": [s for p in phases.values() for s in p["exit_statuses"]],
    }
    c.goal("scaling_2", fields["scaling_2"], ">=", 1.8)
    c.goal("scaling_3", fields["scaling_3"], ">=", 2.6)
    c.goal("idle_cpu_pct", fields["idle_cpu_pct"], "<=", 1)
    c.goal("ownership_losses", fields["ownership_losses"], "<=", 0)
    c.goal("forwarded_share", fields["forwarded_share"], "<=", 0.05)
    c.finish(fields)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--capped", action="store_true", help="members in CPU-capped cgroups: 1, 2, 3 of them")
    p.add_argument("--types", type=int, default=1, choices=(1, 2), help="--capped: entity types the load spreads over")
    p.add_argument(
        "--cap",
        type=float,
        default=CAP,
        help="--capped: cores per member; the members must be the bound: their throttled share says whether they were",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=LEASE_TTL,
        help="the members' --lease-ttl: renewals (an idle member's cost) and failover time follow it",
    )
    args = c.parse(p)
    ttl = args.lease_ttl
    if args.capped:
        capped(args.quick, args.types, args.cap, ttl)
        return
    seconds = 4.0 if args.quick else 12.0
    pg = _postgres_url()
    print(f"cluster: {load.CLIENTS} client processes x {load.INFLIGHT} in flight, {seconds:g}s per phase", flush=True)
    with c.scratch_dir() as d:
        port = free_port()
        server = subprocess.Popen(
            [find_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(d / "js")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"nats://127.0.0.1:{port}"
        time.sleep(0.5)
        prefix = "memoir"  # the load clients send to memoir.cmd.…
        journal = f"{pg}?schema=bench_cluster_{os.getpid()}" if pg else f"{url}?prefix={prefix}"
        print(f"  journal: {'PostgreSQL' if pg else 'JetStream'}", flush=True)
        procs: list[subprocess.Popen[str]] = []
        try:
            plain = runtime(url, journal, str(d / "plain"), cluster=False, prefix=prefix, ttl=ttl)
            load.run_clients(url, "memoir", 1.0)  # warm up: activations, connections
            base = load.run_clients(url, "memoir", seconds)
            base_slow = load.run_clients(url, "memoir", seconds / 2, rate=300)
            plain.terminate()
            plain.wait(30)

            procs.append(runtime(url, journal, str(d / "m1"), cluster=True, prefix=prefix, ttl=ttl))
            c.run(_members, url, prefix, 1, ttl)
            load.run_clients(url, "memoir", 1.0)
            one = load.run_clients(url, "memoir", seconds)
            one_slow = load.run_clients(url, "memoir", seconds / 2, rate=300)

            procs.append(runtime(url, journal, str(d / "m2"), cluster=True, prefix=prefix, ttl=ttl))
            c.run(_members, url, prefix, 2, ttl)
            load.run_clients(url, "memoir", 1.0)
            two = load.run_clients(url, "memoir", seconds)
            two_slow = load.run_clients(url, "memoir", seconds / 2, rate=300)

            victim = procs.pop()
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            failover = c.run(_every_entity_answers, url, prefix)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            server.terminate()
            server.wait(10)
            if pg:
                c.run(_drop_schema, pg, f"bench_cluster_{os.getpid()}")
    scaling = two["per_s"] / one["per_s"]
    forward_ms = two_slow["p50_ms"] - one_slow["p50_ms"]
    c.line("plain runtime commands/s (baseline)", base["per_s"])
    c.line("1 clustered runtime commands/s", one["per_s"])
    c.line("2 clustered runtimes commands/s", two["per_s"])
    c.line("scaling 1 -> 2", f"{scaling:.2f}x")
    c.line("cluster cost vs plain (1 runtime)", f"{one['per_s'] / base['per_s']:.2f}x")
    c.line(
        "p50 at 300/s: plain / 1 / 2 runtimes (ms)",
        f"{base_slow['p50_ms']:.2f} / {one_slow['p50_ms']:.2f} / {two_slow['p50_ms']:.2f}",
    )
    c.line("forwarding hop, p50 added (ms, half the commands)", f"{forward_ms:.2f}")
    c.line("failover: SIGKILL -> every entity answers (s)", f"{failover:.2f}")
    c.line("command errors", base["errors"] + one["errors"] + two["errors"])
    c.goal("scaling 1 -> 2", scaling, ">=", 1.5)
    c.goal("failover seconds", failover, "<=", 5)
    c.finish(
        {
            "journal": "postgres" if pg else "nats",
            "lease_ttl_s": ttl,
            "commands_per_s_plain": base["per_s"],
            "commands_per_s_1": one["per_s"],
            "commands_per_s_2": two["per_s"],
            "scaling": scaling,
            "failover_s": failover,
            "forward_p50_ms": forward_ms,
            "p50_ms_1": one_slow["p50_ms"],
            "p50_ms_2": two_slow["p50_ms"],
            "errors": base["errors"] + one["errors"] + two["errors"],
        }
    )


if __name__ == "__main__":
    main()
