"""Commands over NATS: client processes with 64 requests in flight against `memoir run`, beside a
raw nats-py request/reply echo service at the same concurrency; then latency at half the peak rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import _common as c  # puts the repository on sys.path
import anyio
import nats
from nats.aio.msg import Msg

CLIENTS = 2  # processes; 32 requests in flight each
INFLIGHT = 32
PAYLOAD = b'{"units": 1, "on": "2022-03-01"}'


# -- the two servers ---------------------------------------------------------------------------


async def echo_server(url: str) -> None:
    nc = await nats.connect(url)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("echo.>", cb=echo)
    print("ready", flush=True)
    await anyio.sleep_forever()


# -- a client process ----------------------------------------------------------------------------


async def client(url: str, kind: str, seconds: float, rate: float, seed: int) -> None:
    """Send for `seconds` with INFLIGHT in flight (or paced at `rate`/s); print count and latencies."""
    nc = await nats.connect(url)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    n = 0

    async def worker(w: int) -> None:
        nonlocal n, errors
        while time.perf_counter() < deadline:
            i = n
            n += 1
            if rate:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
            subject = (
                f"memoir.cmd.inventory.SKU-{seed}-{i % 500}.receive"
                if kind == "memoir"
                else f"echo.SKU-{seed}-{i % 500}"
            )
            t = time.perf_counter()
            msg = await nc.request(subject, PAYLOAD, timeout=10)
            latencies.append(time.perf_counter() - t)
            if kind == "memoir" and not json.loads(msg.data)["ok"]:
                errors += 1

    async with anyio.create_task_group() as tg:
        for w in range(INFLIGHT):
            tg.start_soon(worker, w)
    elapsed = time.perf_counter() - started
    await nc.close()
    print(json.dumps({"done": len(latencies), "seconds": elapsed, "errors": errors, "latencies": latencies}))


def run_clients(url: str, kind: str, seconds: float, rate: float = 0.0) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", url, kind, str(seconds), str(rate / CLIENTS), str(k)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(CLIENTS)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    done = sum(r["done"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "per_s": done / max(r["seconds"] for r in results),
        "p50_ms": c.percentile(latencies, 50) * 1000,
        "p99_ms": c.percentile(latencies, 99) * 1000,
        "errors": sum(r["errors"] for r in results),
    }


def start(cmd: list[str], ready: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=c.ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(ready), f"did not start: {line!r}"
    return proc


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float)
    args = p.parse_args()
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    print(f"nats commands: {CLIENTS} client processes x {INFLIGHT} in flight, {seconds:g}s per phase", flush=True)
    env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
    with c.scratch_dir() as d:
        runtime = start(
            [
                sys.executable,
                "-m",
                "runtime.serve.cli",
                "run",
                "--data-dir",
                str(d / "data"),
                "--log-format",
                "json",
                "--log-level",
                "warning",
            ],
            "memoir: serving",
            env,
        )
        url = (d / "data" / "nats.url").read_text().strip()
        echo = start([sys.executable, __file__, "--echo", url], "ready", env)
        try:
            run_clients(url, "memoir", 1.0)  # warm up: activations, connections
            peak = run_clients(url, "memoir", seconds)
            raw = run_clients(url, "echo", seconds)
            half = run_clients(url, "memoir", seconds, rate=peak["per_s"] / 2)
        finally:
            echo.terminate()
            runtime.terminate()
            runtime.wait(30)
            echo.wait(10)
    ratio = peak["per_s"] / raw["per_s"]
    c.line("memoir commands/s (64 in flight)", peak["per_s"])
    c.line("memoir latency p50 / p99 at peak (ms)", f"{peak['p50_ms']:.2f} / {peak['p99_ms']:.2f}")
    c.line("raw nats-py request/reply echo/s (64 in flight)", raw["per_s"])
    c.line("ratio vs raw", f"{ratio:.2f}x")
    c.line(
        f"at half the peak rate ({half['per_s']:,.0f}/s): p50 / p99 (ms)",
        f"{half['p50_ms']:.2f} / {half['p99_ms']:.2f}",
    )
    c.line("command errors", peak["errors"] + half["errors"])
    c.goal("ratio vs raw", ratio, ">=", 0.5)
    c.goal("p99 ms at half the peak rate", half["p99_ms"], "<=", 10)
    c.finish(
        {
            "commands_per_s": peak["per_s"],
            "raw_request_reply_per_s": raw["per_s"],
            "ratio_vs_raw": ratio,
            "p50_ms": half["p50_ms"],
            "p99_ms": half["p99_ms"],
            "half_rate_per_s": half["per_s"],
            "peak_p50_ms": peak["p50_ms"],
            "peak_p99_ms": peak["p99_ms"],
            "errors": peak["errors"] + half["errors"],
        }
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, kind, secs, rate, seed = sys.argv[2:7]
        anyio.run(client, url, kind, float(secs), float(rate), int(seed))
    elif len(sys.argv) > 1 and sys.argv[1] == "--echo":
        anyio.run(echo_server, sys.argv[2])
    else:
        main()
