"""Commands over NATS: client processes with 64 requests in flight against `memoir run`, beside a
raw nats-py request/reply echo service at the same concurrency; then latency at half the peak rate;
then the same commands with bearer JWTs (HS256) that the runtime verifies: one token per client
(a session, answered from the verifier's cache after its first check) and a fresh token per request
(a signature check every time), against a baseline sending a header of the same size that nobody
verifies, so the ratios isolate verification and the audit column rather than nats-py's header
handling. All phases run against the same process, interleaved in short rounds.

`--tracing` measures what tracing costs instead: four runtimes of this tree, one with its tracing hooks
compiled out (the baseline: it differs from the others by tracing alone, see `without_tracing`), and three
with tracing off, 1 % and 100 % of commands sampled, their spans exported over OTLP/HTTP."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as c  # puts the repository on sys.path
import anyio
import jwt
import nats
from nats.aio.msg import Msg

from runtime.wire.auth import NatsAuth

CLIENTS = 2  # processes; 32 requests in flight each
INFLIGHT = 32
PAYLOAD = b'{"units": 1, "on": "2022-03-01"}'
SECRET = "benchmark-secret-0123456789abcdef0123"  # HS256; handed to `memoir run` as MEMOIR_JWT_SECRET
ROUNDS = 4
TOKENS_DIR = Path(os.environ.get("MEMOIR_BENCH_TOKENS", "."))
FRESH = 15_000  # distinct tokens per client in the fresh-token phase: more than the verifier caches (10,000)


TOKEN_KINDS = ("memoir-pad", "memoir-token", "memoir-fresh")


def mint(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


# -- the two servers ---------------------------------------------------------------------------


async def echo_server(url: str) -> None:
    nc = await nats.connect(url, **NatsAuth.from_env().options())  # the data dir's key: MEMOIR_NATS_NKEY

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("echo.>", cb=echo)
    print("ready", flush=True)
    await anyio.sleep_forever()


# -- a client process ----------------------------------------------------------------------------


async def client(url: str, kind: str, seconds: float, rate: float, seed: int) -> None:
    """Send for `seconds` with INFLIGHT in flight (or paced at `rate`/s); print count and latencies."""
    tokens = [mint(f"client-{seed}")] if kind == "memoir-token" else []
    if kind == "memoir-fresh":  # minted by the parent before any phase: no client spends CPU on it here
        tokens = (TOKENS_DIR / f"fresh-{seed}.txt").read_text().split()
    pad = "x" * len(f"Bearer {mint(f'client-{seed}')}")
    nc = await nats.connect(url, **NatsAuth.from_env().options())  # the data dir's key: MEMOIR_NATS_NKEY
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
                await c.sleep_until(started + i / rate)
            memoir = kind.startswith("memoir")
            subject = f"memoir.cmd.inventory.SKU-{seed}-{i % 500}.receive" if memoir else f"echo.SKU-{seed}-{i % 500}"
            if tokens:
                headers: dict[str, str] | None = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            elif kind == "memoir-pad":  # a header of a token's size that nobody verifies: the baseline
                headers = {"X-Bench-Pad": pad}
            else:
                headers = None
            t = time.perf_counter()
            msg = await nc.request(subject, PAYLOAD, timeout=10, headers=headers)
            latencies.append(time.perf_counter() - t)
            if memoir and not json.loads(msg.data)["ok"]:
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
            [sys.executable, __file__, "--client", url, kind, str(seconds), str(rate / CLIENTS), str(k), c.LOOP],
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


def verify_cost(n: int = 2000) -> dict[str, float]:
    """Microseconds per `Verifier.verify` in this process: a cached token, and fresh HS256 and RS256 ones."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from runtime.serve.service.auth import VerificationKey, Verifier

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out: dict[str, float] = {}
    exp = int(time.time()) + 3600
    for name, key, verifying in (
        ("HS256", SECRET.encode(), VerificationKey.hmac(SECRET.encode())),
        ("RS256", rsa_key, VerificationKey.public(rsa_key.public_key())),
    ):
        tokens = [f"Bearer {jwt.encode({'sub': f'u{k}', 'exp': exp}, key, algorithm=name)}" for k in range(n)]
        v = Verifier([verifying], cache_size=0)
        t = time.perf_counter()
        for header in tokens:
            v.verify(header)
        out[name] = (time.perf_counter() - t) / n * 1e6
    cached = Verifier([VerificationKey.hmac(SECRET.encode())])
    header = f"Bearer {mint('cached')}"
    t = time.perf_counter()
    for _ in range(n * 10):
        cached.verify(header)
    out["cached"] = (time.perf_counter() - t) / (n * 10) * 1e6
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used, its threads included (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(cmd: list[str], ready: str, env: dict[str, str] | None = None, cwd: Path = c.ROOT) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(ready), f"did not start: {line!r}"
    return proc


def start_runtime(data: Path, env: dict[str, str], code: Path = c.ROOT) -> tuple[subprocess.Popen[str], str]:
    """`memoir run` of the code in `code` on the embedded defaults in `data`, on the benchmark's loop; and its
    NATS URL."""
    argv = [sys.executable, "-m", "runtime.serve.cli", "run", "--data-dir", str(data)]
    flags = ["--log-format", "json", "--log-level", "warning", "--loop", c.LOOP]
    runtime = start([*argv, *flags], "memoir: serving", {**env, "PYTHONPATH": str(code)}, code)
    return runtime, (data / "nats.url").read_text().strip()


# The tracing hooks outside `runtime/wire/tracing.py`, and what each is compiled to in the baseline.
HOOKS = (
    ("tracing.tracer() is None", "True"),
    ("tracing.tracer() is not None", "False"),
    ("tracing.traceparent()", "None"),
)


def without_tracing(into: Path) -> tuple[Path, int]:
    """This tree as it is now (runtime/ and entities/) copied into `into` with its tracing hooks compiled
    out, and how many there were: each check of whether a tracer is installed becomes a constant, so
    CPython drops the traced branches when it compiles the copy (`if True:` leaves no test behind).

    The baseline differs from "off" by tracing alone. The commit before tracing existed (the baseline
    this benchmark used to take) differs by every feature landed since as well: 120.6 against 134.9 µs
    per command in one run, most of it not tracing's. An environment switch inside `tracing.py` could
    only make `tracer()` answer None, which is what "off" is already; the call sites would still pay
    for asking. A hook of another shape is left as it is, so the copy must hold no `tracing.tracer()`
    any more: a new kind of hook fails the benchmark rather than silently stays in the baseline.
    """
    into.mkdir()
    for package in ("runtime", "entities"):
        shutil.copytree(c.ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    hooks = 0
    for path in (into / "runtime").rglob("*.py"):
        if path == into / "runtime" / "wire" / "tracing.py":
            continue
        text = new = path.read_text()
        for hook, constant in HOOKS:
            hooks += new.count(hook)
            new = new.replace(hook, constant)
        assert "tracing.tracer()" not in new, f"{path.relative_to(into)}: a tracing hook of a shape not in HOOKS"
        if new != text:
            path.write_text(new)
    assert hooks, "no tracing hook found: HOOKS no longer matches the code"
    return into, hooks


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes every export and keeps nothing: the runtime pays for
    recording, batching, encoding and sending its spans, not for a collector's work. It keeps
    connections open between exports, as a collector does (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


TRACING = {"off": {}, "1%": {"OTEL_TRACES_SAMPLER_ARG": "0.01"}, "100%": {"OTEL_TRACES_SAMPLER_ARG": "1.0"}}
MODES = ("before", *TRACING)  # before: this tree with its tracing hooks compiled out (`without_tracing`)


def tracing_main(seconds: float, rounds: int) -> None:
    """This tree with its tracing hooks compiled out (`without_tracing`), and as it is with tracing off, on with
    1 % of commands sampled, on with all: four runtimes, rounds interleaved (each round runs the four in turn, in a
    rotating order)."""
    print(f"tracing cost: {CLIENTS} client processes x {INFLIGHT} in flight, {rounds} rounds of {seconds:g}s")
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}/v1/traces",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_SERVICE_NAME": "memoir-bench",
    }
    runtimes: dict[str, tuple[subprocess.Popen[str], str, str]] = {}
    with c.scratch_dir() as d:
        old, hooks = without_tracing(d / "before")
        rev = f"this tree without its {hooks} tracing hooks"
        print(f"  before tracing: {rev}", flush=True)
        try:
            for mode in MODES:
                data = d / f"data-{len(runtimes)}"
                extra = TRACING.get(mode)
                env = {**os.environ, **(otel | extra if extra else {})}
                proc, url = start_runtime(data, env, old if mode == "before" else c.ROOT)
                runtimes[mode] = (proc, url, str(data / "nats.nk"))
            results = []
            for r in range(rounds + 1):  # the first round warms up: activations, connections
                result = {}
                for k in range(len(MODES)):
                    mode = MODES[(r + k) % len(MODES)]
                    _, url, key = runtimes[mode]
                    os.environ["MEMOIR_NATS_NKEY"] = key  # the client processes inherit it
                    pid = runtimes[mode][0].pid
                    used = cpu_seconds(pid)
                    result[mode] = run_clients(url, "memoir", seconds if r else 1.0)
                    done = result[mode]["per_s"] * (seconds if r else 1.0)
                    result[mode]["cpu_us"] = (cpu_seconds(pid) - used) / max(done, 1) * 1e6
                if r:
                    results.append(result)
        finally:
            for proc, _, _ in runtimes.values():
                proc.terminate()
                proc.wait(30)
            sink.shutdown()
    per_s = {mode: statistics.mean(r[mode]["per_s"] for r in results) for mode in MODES}
    vs = {mode: statistics.median(r[mode]["per_s"] / r["before"]["per_s"] for r in results) for mode in MODES}
    vs_off = {mode: statistics.median(r[mode]["per_s"] / r["off"]["per_s"] for r in results) for mode in TRACING}
    # what a command costs the runtime's CPU (its threads included: the span exporter's): on a machine whose
    # other load moves the commands/s between phases, the steadier measure of what tracing adds
    cpu = {mode: statistics.median(r[mode]["cpu_us"] for r in results) for mode in MODES}
    per_cpu = {mode: statistics.median(r["before"]["cpu_us"] / r[mode]["cpu_us"] for r in results) for mode in MODES}
    c.line("no tracing hooks / off / 1 % / 100 % commands/s", " / ".join(f"{per_s[m]:,.0f}" for m in MODES))
    c.line("vs no tracing hooks, median of rounds: off / 1 % / 100 %", " / ".join(f"{vs[m]:.2f}x" for m in TRACING))
    c.line("vs off, median of rounds: 1 % / 100 %", f"{vs_off['1%']:.2f}x / {vs_off['100%']:.2f}x")
    c.line("runtime CPU per command (us): no hooks / off / 1 % / 100 %", " / ".join(f"{cpu[m]:.0f}" for m in MODES))
    c.line("commands per CPU second vs no hooks: off / 1 % / 100 %", " / ".join(f"{per_cpu[m]:.2f}x" for m in TRACING))
    spread = {m: [r["before"]["cpu_us"] / r[m]["cpu_us"] for r in results] for m in TRACING}  # the machine's noise
    c.line("  the same, lowest-highest round", " / ".join(f"{min(v):.2f}-{max(v):.2f}" for v in spread.values()))
    c.line("command errors", sum(x["errors"] for r in results for x in r.values()))
    c.goal("tracing off vs no tracing hooks (per CPU second)", per_cpu["off"], ">=", 0.98)
    c.goal("1 % sampling vs no tracing hooks (per CPU second)", per_cpu["1%"], ">=", 0.95)
    c.goal("100 % sampling vs no tracing hooks (per CPU second)", per_cpu["100%"], ">=", 0.8)
    c.finish(
        {
            "before_tracing": rev,
            "before_tracing_per_s": per_s["before"],
            "tracing_off_per_s": per_s["off"],
            "tracing_1pct_per_s": per_s["1%"],
            "tracing_100pct_per_s": per_s["100%"],
            "tracing_off_vs_before": vs["off"],
            "tracing_1pct_vs_before": vs["1%"],
            "tracing_100pct_vs_before": vs["100%"],
            "cpu_us_before": cpu["before"],
            "cpu_us_off": cpu["off"],
            "cpu_us_1pct": cpu["1%"],
            "cpu_us_100pct": cpu["100%"],
            "per_cpu_off_vs_before": per_cpu["off"],
            "per_cpu_1pct_vs_before": per_cpu["1%"],
            "per_cpu_100pct_vs_before": per_cpu["100%"],
            "tracing_1pct_ratio": vs_off["1%"],
            "tracing_100pct_ratio": vs_off["100%"],
        }
    )


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float)
    p.add_argument(
        "--tracing",
        action="store_true",
        help="only the cost of tracing: this tree without its tracing hooks, and tracing off, 1 %% and 100 %% sampled",
    )
    p.add_argument("--rounds", type=int, help="rounds of the --tracing phases (default 4, 5 with --quick)")
    args = c.parse(p)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    if args.tracing:
        tracing_main(seconds / 4, args.rounds or (5 if args.quick else ROUNDS))
        return
    print(f"nats commands: {CLIENTS} client processes x {INFLIGHT} in flight, {seconds:g}s per phase", flush=True)
    env = {**os.environ, "MEMOIR_JWT_SECRET": SECRET}
    with c.scratch_dir() as d:
        for k in range(CLIENTS):
            (d / f"fresh-{k}.txt").write_text("\n".join(mint(f"client-{k}-{n}") for n in range(FRESH)))
        os.environ["MEMOIR_BENCH_TOKENS"] = str(d)  # the client processes inherit it
        runtime, url = start_runtime(d / "data", env)
        env["MEMOIR_NATS_NKEY"] = os.environ["MEMOIR_NATS_NKEY"] = str(d / "data" / "nats.nk")  # echo, clients
        echo = start([sys.executable, __file__, "--echo", url, c.LOOP], "ready", env)
        try:
            run_clients(url, "memoir", 1.0)  # warm up: activations, connections
            peak = run_clients(url, "memoir", seconds)
            raw = run_clients(url, "echo", seconds)
            half = run_clients(url, "memoir", seconds, rate=peak["per_s"] / 2)
            # without / with tokens interleaved in short rounds, so drift in the machine's load hits all
            # three alike; each ratio is the median of the rounds' own ratios
            rounds = [[run_clients(url, kind, seconds / ROUNDS) for kind in TOKEN_KINDS] for _ in range(ROUNDS)]
        finally:
            echo.terminate()
            runtime.terminate()
            runtime.wait(30)
            echo.wait(10)
    ratio = peak["per_s"] / raw["per_s"]
    bare, tokened, fresh = ({"per_s": statistics.mean(r[k]["per_s"] for r in rounds)} for k in range(3))
    token_ratio = statistics.median(r[1]["per_s"] / r[0]["per_s"] for r in rounds)
    fresh_ratio = statistics.median(r[2]["per_s"] / r[0]["per_s"] for r in rounds)
    cost = verify_cost()
    c.line("memoir commands/s (64 in flight)", peak["per_s"])
    c.line("memoir latency p50 / p99 at peak (ms)", f"{peak['p50_ms']:.2f} / {peak['p99_ms']:.2f}")
    c.line("raw nats-py request/reply echo/s (64 in flight)", raw["per_s"])
    c.line("ratio vs raw", f"{ratio:.2f}x")
    c.line(
        f"at half the peak rate ({half['per_s']:,.0f}/s): p50 / p99 (ms)",
        f"{half['p50_ms']:.2f} / {half['p99_ms']:.2f}",
    )
    c.line("interleaved: no token (a same-size header) commands/s", bare["per_s"])
    c.line("with a bearer token per client (cached) commands/s", tokened["per_s"])
    c.line("with a fresh bearer token per command commands/s", fresh["per_s"])
    c.line("token cost ratio, median of rounds: cached / fresh", f"{token_ratio:.2f}x / {fresh_ratio:.2f}x")
    c.line(
        "one verification (us): cached / HS256 / RS256",
        f"{cost['cached']:.1f} / {cost['HS256']:.1f} / {cost['RS256']:.1f}",
    )
    errors = peak["errors"] + half["errors"] + sum(x["errors"] for r in rounds for x in r)
    c.line("command errors", errors)
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
            "errors": errors,
            "no_token_interleaved_per_s": bare["per_s"],
            "with_tokens_per_s": tokened["per_s"],
            "token_cost_ratio": token_ratio,
            "fresh_tokens_per_s": fresh["per_s"],
            "fresh_token_cost_ratio": fresh_ratio,
            "verify_us_cached": cost["cached"],
            "verify_us_hs256": cost["HS256"],
            "verify_us_rs256": cost["RS256"],
        }
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, kind, secs, rate, seed, c.LOOP = sys.argv[2:8]
        c.run(client, url, kind, float(secs), float(rate), int(seed))
    elif len(sys.argv) > 1 and sys.argv[1] == "--echo":
        c.LOOP = sys.argv[3]
        c.run(echo_server, sys.argv[2])
    else:
        main()
