"""Commands over HTTP vs the same commands over NATS: client processes with 64 in flight against `memoir run
--http-port`, then the candidate server libraries, each a front process doing the gateway's command path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio
import nats

from runtime.serve.service.embedded_nats import free_port
from runtime.wire.auth import NatsAuth

CLIENTS = 2  # processes; 32 requests in flight each
INFLIGHT = 32
PAYLOAD = b'{"units": 1, "on": "2022-03-01"}'
CANDIDATES = ("uvicorn", "starlette", "aiohttp")


# -- candidate fronts: the gateway's command path (a NATS request to the command subject) on each library --


async def _forward(nc: Any, path: str, body: bytes, key: str | None) -> tuple[int, bytes]:
    _, entity_type, entity_id, command = path.split("/")
    headers = {"Memoir-Timeout-Ms": "10000", **({"Memoir-Command-Id": key} if key else {})}
    msg = await nc.request(f"memoir.cmd.{entity_type}.{entity_id}.{command}", body, timeout=10, headers=headers)
    return (200 if msg.data.startswith(b'{"ok":true') else 400), msg.data


def front(kind: str, url: str, port: int) -> None:
    """Serve POST /{type}/{id}/{command} with `kind`, forwarding to NATS as the gateway does."""
    import asyncio

    async def main() -> None:
        nc = await nats.connect(url, **NatsAuth.from_env().options())  # the data dir's key: MEMOIR_NATS_NKEY
        if kind == "aiohttp":
            from aiohttp import web

            async def handle(request: web.Request) -> web.Response:
                status, data = await _forward(
                    nc, request.path, await request.read(), request.headers.get("Idempotency-Key")
                )
                return web.Response(status=status, body=data, content_type="application/json")

            app = web.Application()
            app.router.add_post("/{type}/{id}/{command}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            print("ready", flush=True)
            await asyncio.Event().wait()
        import uvicorn

        asgi: Any
        if kind == "starlette":
            from starlette.applications import Starlette
            from starlette.requests import Request
            from starlette.responses import Response
            from starlette.routing import Route

            async def endpoint(request: Request) -> Response:
                status, data = await _forward(
                    nc, request.url.path, await request.body(), request.headers.get("idempotency-key")
                )
                return Response(data, status, media_type="application/json")

            asgi = Starlette(routes=[Route("/{type}/{id}/{command}", endpoint, methods=["POST"])])
        else:  # uvicorn with a bare ASGI callable, as runtime/serve/http does

            async def asgi(scope: Any, receive: Any, send: Any) -> None:
                body = b""
                while True:
                    m = await receive()
                    body += m.get("body", b"")
                    if not m.get("more_body"):
                        break
                key = next((v.decode() for k, v in scope["headers"] if k == b"idempotency-key"), None)
                status, data = await _forward(nc, scope["path"], body, key)
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": data})

        config = uvicorn.Config(asgi, "127.0.0.1", port, http="httptools", lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        print("ready", flush=True)
        await server.serve()

    asyncio.run(main())


# -- a client process ----------------------------------------------------------------------------------


async def client(target: str, kind: str, seconds: float, seed: int) -> None:
    """Send for `seconds` with INFLIGHT in flight over `kind` (nats or http); print count and latencies."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    n = 0
    if kind == "nats":
        nc = await nats.connect(target, **NatsAuth.from_env().options())

        async def one(i: int) -> bool:
            msg = await nc.request(f"memoir.cmd.inventory.H-{seed}-{i % 500}.receive", PAYLOAD, timeout=10)
            return msg.data.startswith(b'{"ok":true')
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=INFLIGHT))

        async def one(i: int) -> bool:
            url = f"{target}/inventory/H-{seed}-{i % 500}/receive"
            async with session.post(url, data=PAYLOAD, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                return r.status == 200

    async def worker() -> None:
        nonlocal n, errors
        while time.perf_counter() < deadline:
            i = n
            n += 1
            t = time.perf_counter()
            ok = await one(i)
            latencies.append(time.perf_counter() - t)
            errors += not ok

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(INFLIGHT):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - started
    await (nc.close() if kind == "nats" else session.close())
    print(json.dumps({"done": len(latencies), "seconds": elapsed, "errors": errors, "latencies": latencies}))


def run_clients(target: str, kind: str, seconds: float) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", target, kind, str(seconds), str(k)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(CLIENTS)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "per_s": sum(r["done"] for r in results) / max(r["seconds"] for r in results),
        "p50_ms": c.percentile(latencies, 50) * 1000,
        "p99_ms": c.percentile(latencies, 99) * 1000,
        "errors": sum(r["errors"] for r in results),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (Linux): what a request costs its server, whatever the machine's load."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(target: str, kind: str, seconds: float, server: int) -> dict[str, float]:
    before = cpu_seconds(server)
    result = run_clients(target, kind, seconds)
    done = result["per_s"] * seconds
    return {**result, "cpu_us": (cpu_seconds(server) - before) / max(done, 1) * 1e6}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median rate (its latencies with it); errors summed over all runs."""
    ordered = sorted(runs, key=lambda r: r["per_s"])
    return {**ordered[len(ordered) // 2], "errors": sum(r["errors"] for r in runs)}


def start(cmd: list[str], ready: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=c.ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(ready), f"did not start: {line!r}"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float)
    p.add_argument("--candidates", action="store_true", help="also measure each candidate server library")
    args = p.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rounds = 3 if args.quick else 5
    print(
        f"http commands: {CLIENTS} client processes x {INFLIGHT} in flight; {rounds} rounds of {seconds:g}s phases,"
        " alternating (a shared machine's load drifts), medians",
        flush=True,
    )
    env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
    port = free_port()
    samples: dict[str, list[dict[str, float]]] = {}
    with c.scratch_dir() as d:
        run = [sys.executable, "-m", "runtime.serve.cli", "run", "--data-dir", str(d / "data")]
        runtime = start(
            [*run, "--http-port", str(port), "--http-insecure", "--log-format", "json", "--log-level", "warning"],
            "memoir: serving",
            env,
        )
        url = (d / "data" / "nats.url").read_text().strip()
        http = f"http://127.0.0.1:{port}"
        env["MEMOIR_NATS_NKEY"] = os.environ["MEMOIR_NATS_NKEY"] = str(d / "data" / "nats.nk")  # fronts, clients
        procs: list[subprocess.Popen[str]] = []
        try:
            targets = {"nats": (url, "nats", runtime.pid), "http": (http, "http", runtime.pid)}
            for kind in CANDIDATES if args.candidates else ():
                fport = free_port()
                procs.append(start([sys.executable, __file__, "--front", kind, url, str(fport)], "ready", env))
                targets[kind] = (f"http://127.0.0.1:{fport}", "http", procs[-1].pid)
            for target, kind, _ in targets.values():
                run_clients(target, kind, 1.0)  # warm up: activations, connections
            for _ in range(rounds):
                for name, (target, kind, pid) in targets.items():
                    samples.setdefault(name, []).append(measure(target, kind, seconds, pid))
        finally:
            for proc in procs:
                stop(proc)
            stop(runtime)
    over_nats, over_http = median(samples.pop("nats")), median(samples.pop("http"))
    fronts = {kind: median(s) for kind, s in samples.items()}
    ratio = over_http["per_s"] / over_nats["per_s"]
    c.line("commands/s over NATS (64 in flight), median", over_nats["per_s"])
    c.line("commands/s over HTTP, memoir run --http-port", over_http["per_s"])
    c.line("ratio HTTP / NATS", f"{ratio:.2f}x")
    c.line("HTTP p50 / p99 at peak (ms)", f"{over_http['p50_ms']:.2f} / {over_http['p99_ms']:.2f}")
    c.line("NATS p50 / p99 at peak (ms)", f"{over_nats['p50_ms']:.2f} / {over_nats['p99_ms']:.2f}")
    c.line("memoir run CPU per command over NATS (us)", over_nats["cpu_us"])
    c.line("memoir run CPU per command over HTTP (us)", over_http["cpu_us"])
    for kind, r in fronts.items():
        c.line(f"candidate {kind}: commands/s; front CPU per command (us)", f"{r['per_s']:,.0f}; {r['cpu_us']:,.0f}")
    errors = over_nats["errors"] + over_http["errors"] + sum(r["errors"] for r in fronts.values())
    c.line("command errors", errors)
    c.goal("ratio HTTP / NATS", ratio, ">=", 0.5)
    c.finish(
        {
            "bench": "http_commands",
            "http_per_s": over_http["per_s"],
            "nats_per_s": over_nats["per_s"],
            "ratio": ratio,
            "http_p50_ms": over_http["p50_ms"],
            "http_p99_ms": over_http["p99_ms"],
            "server": "uvicorn+httptools (bare ASGI)",
            "nats_cpu_us": over_nats["cpu_us"],
            "http_cpu_us": over_http["cpu_us"],
            **{f"{kind}_front_per_s": r["per_s"] for kind, r in fronts.items()},
            **{f"{kind}_front_cpu_us": r["cpu_us"] for kind, r in fronts.items()},
            "errors": errors,
        }
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        target, kind, secs, seed = sys.argv[2:6]
        anyio.run(client, target, kind, float(secs), int(seed))
    elif len(sys.argv) > 1 and sys.argv[1] == "--front":
        front(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
