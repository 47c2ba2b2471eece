"""Open-loop latency of commands over NATS: sends on a fixed schedule at 25/50/75 % of the peak.

A closed loop (send when the previous reply is back) slows down with the server and so hides
its stalls: coordinated omission. Here each client process sends request i at its intended time
`start + i / rate`, whatever is still outstanding, and a latency is measured from that intended
time, not from when the request went out; a stall therefore counts for every request it held up,
as HdrHistogram's corrected recording does. Percentiles are exact (every latency is kept).
The generator shares the machine with the server, so it reports how late it sent (send lag) and
the rate it achieved against the one intended: a p99 the generator caused shows as such. It costs
no task, future or timer per request.
The peak is measured first, closed-loop with 64 in flight, as nats_commands.py does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import _common as c  # puts the repository on sys.path
import anyio
import anyio.lowlevel
import nats
import nats_commands as nc_bench
from nats.aio.msg import Msg

from runtime.wire.auth import NatsAuth

CLIENTS = nc_bench.CLIENTS
FRACTIONS = (0.25, 0.50, 0.75)
MAX_OUTSTANDING = 20_000  # per client: past this the schedule waits (and its latencies still count)
REPLY_TIMEOUT = 10.0  # after the last send: what is unanswered then is an error, its latency kept


async def open_loop_client(url: str, rate: float, seconds: float, seed: int) -> None:
    """Send `rate`/s for `seconds` on schedule; print every latency from its intended send time.

    The generator must cost far less than the server it measures, on a machine they share: so no
    task, future or timer per request. Each request is a plain publish with its own reply subject
    under one wildcard inbox subscription, and its intended time waits in a dict for the reply.
    How late each send went out is recorded too: a generator that cannot keep its schedule says
    so (`send_lag`) instead of passing its own delay off as the server's.
    """
    conn = await nats.connect(url, **NatsAuth.from_env().options())  # the data dir's key: MEMOIR_NATS_NKEY
    inbox = f"_INBOX.lat{seed}.{os.getpid()}"
    latencies: list[float] = []
    send_lags: list[float] = []
    pending: dict[bytes, float] = {}  # reply subject's last token -> intended send time
    errors = 0
    cut = len(inbox) + 1
    all_back = anyio.Event()
    total = int(rate * seconds)
    sent = 0

    async def on_reply(msg: Msg) -> None:
        nonlocal errors
        intended = pending.pop(msg.subject[cut:].encode(), None)
        if intended is None:
            return
        latencies.append(time.perf_counter() - intended)
        if not json.loads(msg.data)["ok"]:
            errors += 1
        if sent == total and not pending:
            all_back.set()

    await conn.subscribe(inbox + ".*", cb=on_reply, pending_msgs_limit=0, pending_bytes_limit=0)
    await conn.flush()
    start = time.perf_counter() + 0.05
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)  # every request whose time has come
        if due <= sent:
            await c.sleep_until(start + sent / rate)
            continue
        while sent < due and len(pending) < MAX_OUTSTANDING:
            intended = start + sent / rate
            key = str(sent).encode()
            pending[key] = intended
            send_lags.append(time.perf_counter() - intended)
            await conn.publish(
                f"memoir.cmd.inventory.L-{seed}-{sent % 500}.receive", nc_bench.PAYLOAD, reply=f"{inbox}.{sent}"
            )
            sent += 1
        if len(pending) >= MAX_OUTSTANDING:
            await anyio.sleep(0.001)  # past the cap the schedule waits (and its latencies still count)
        else:
            await anyio.lowlevel.checkpoint()  # let replies in between bursts
    sending = time.perf_counter() - start
    with anyio.move_on_after(REPLY_TIMEOUT):
        if pending:
            await all_back.wait()
    timed_out = len(pending)
    now = time.perf_counter()
    latencies += [now - t for t in pending.values()]  # a lost reply counts, as a timeout would
    elapsed = time.perf_counter() - start
    await conn.close()
    print(
        json.dumps(
            {
                "done": len(latencies),
                "seconds": elapsed,
                "sending_seconds": sending,
                "errors": errors + timed_out,
                "latencies": latencies,
                "send_lags": send_lags,
            }
        )
    )


def at_rate(url: str, rate: float, seconds: float) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", url, str(rate / CLIENTS), str(seconds), str(k), c.LOOP],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(CLIENTS)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    latencies = [x for r in results for x in r["latencies"]]
    lags = [x for r in results for x in r["send_lags"]]
    return {
        "per_s": sum(r["done"] for r in results) / max(r["seconds"] for r in results),
        "sent_per_s": len(lags) / max(r["sending_seconds"] for r in results),
        "send_lag_p99_ms": c.percentile(lags, 99) * 1000,
        "p50_ms": c.percentile(latencies, 50) * 1000,
        "p99_ms": c.percentile(latencies, 99) * 1000,
        "p999_ms": c.percentile(latencies, 99.9) * 1000,
        "max_ms": max(latencies, default=0.0) * 1000,
        "errors": sum(r["errors"] for r in results),
    }


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float)
    args = c.parse(p)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    print(f"open-loop latency: {CLIENTS} client processes, {seconds:g}s per rate, loop {c.LOOP}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
    rows: dict[float, dict[str, float]] = {}
    with c.scratch_dir() as d:
        runtime, url = nc_bench.start_runtime(d / "data", env)
        os.environ["MEMOIR_NATS_NKEY"] = str(d / "data" / "nats.nk")  # the client processes inherit it
        try:
            nc_bench.run_clients(url, "memoir", 1.0)  # warm up: activations, connections
            peak = nc_bench.run_clients(url, "memoir", seconds)
            for f in FRACTIONS:
                rows[f] = at_rate(url, peak["per_s"] * f, seconds)
        finally:
            runtime.terminate()
            runtime.wait(30)
    c.line("peak commands/s (closed loop, 64 in flight)", peak["per_s"])
    for f, r in rows.items():
        c.line(
            f"{f:.0%} of peak ({r['per_s']:,.0f}/s): p50 / p99 / p99.9 / max (ms)",
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['p999_ms']:.2f} / {r['max_ms']:.1f}",
        )
        c.line(
            "  the generator: sent/s of intended; send lag p99 (ms)",
            f"{r['sent_per_s']:,.0f} of {peak['per_s'] * f:,.0f}; {r['send_lag_p99_ms']:.2f}",
        )
        if r["send_lag_p99_ms"] > 1 and r["send_lag_p99_ms"] > r["p99_ms"] / 4:
            print("  (the generator fell behind its own schedule: part of that p99 is the generator's)", flush=True)
    errors = sum(r["errors"] for r in rows.values())
    c.line("command errors", errors)
    c.goal("p99 ms at 50% of peak", rows[0.5]["p99_ms"], "<=", 10)
    fields: dict[str, float] = {"peak_per_s": peak["per_s"]}
    for f, r in rows.items():
        pct = f"{f * 100:.0f}pct"
        fields |= {
            f"rate_per_s_at_{pct}": r["per_s"],
            f"p50_ms_at_{pct}": r["p50_ms"],
            f"p99_ms_at_{pct}": r["p99_ms"],
            f"p999_ms_at_{pct}": r["p999_ms"],
            f"send_lag_p99_ms_at_{pct}": r["send_lag_p99_ms"],
            f"sent_per_s_at_{pct}": r["sent_per_s"],
        }
    c.finish({**fields, "errors": errors})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, rate, secs, seed, c.LOOP = sys.argv[2:7]
        c.run(open_loop_client, url, float(rate), float(secs), int(seed))
    else:
        main()
