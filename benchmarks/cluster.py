"""Scale-out: commands/s over NATS with 1 and with 2 `memoir run --cluster` processes on one journal,
the forwarding hop's cost, and failover time (SIGKILL → every entity answers again).

Baseline in the same run: one plain `memoir run` (no cluster: no routing, no leases) on the same
journal and NATS server. The client processes and the load are those of nats_commands.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import _common as c  # puts the repository on sys.path
import anyio
import nats_commands as load

from runtime.serve.service.embedded_nats import find_binary, free_port

ENTITIES = 200
LEASE_TTL = 2.0


def _postgres_url() -> str | None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return os.environ.get("MEMOIR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    except OSError:
        return None


def runtime(url: str, journal: str, data: str, *, cluster: bool, prefix: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "runtime.serve.cli", "run", "--nats-url", url, "--journal", journal]
    argv += ["--data-dir", data, "--prefix", prefix, "--log-format", "json", "--log-level", "warning"]
    if cluster:
        argv += ["--cluster", "--lease-ttl", str(LEASE_TTL)]
    return load.start(argv, "memoir: serving", {**os.environ, "PYTHONPATH": str(c.ROOT)})


async def _members(url: str, prefix: str, want: int) -> None:
    from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, settled
    from runtime.wire.nats import close_quietly, connect

    nc = await connect(url)
    try:
        await settled(nc, ClusterConfig(name=prefix, lease=LeaseConfig(ttl=LEASE_TTL)), want)
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


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    args = c.parse(p)
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
            plain = runtime(url, journal, str(d / "plain"), cluster=False, prefix=prefix)
            load.run_clients(url, "memoir", 1.0)  # warm up: activations, connections
            base = load.run_clients(url, "memoir", seconds)
            base_slow = load.run_clients(url, "memoir", seconds / 2, rate=300)
            plain.terminate()
            plain.wait(30)

            procs.append(runtime(url, journal, str(d / "m1"), cluster=True, prefix=prefix))
            c.run(_members, url, prefix, 1)
            load.run_clients(url, "memoir", 1.0)
            one = load.run_clients(url, "memoir", seconds)
            one_slow = load.run_clients(url, "memoir", seconds / 2, rate=300)

            procs.append(runtime(url, journal, str(d / "m2"), cluster=True, prefix=prefix))
            c.run(_members, url, prefix, 2)
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
