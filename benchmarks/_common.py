"""What every benchmark shares: argument defaults, percentiles, goal lines, and the final JSON line.

Rules (DEVELOPERS.md): each benchmark runs its baseline in the same run and prints ratios,
`--quick` finishes in under a minute, and the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import operator
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

from runtime.serve.process import eventloop  # noqa: E402 - after the path above

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
LOOP: str = eventloop.DEFAULT  # set from --loop by `parse`


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    p.add_argument(
        "--loop",
        choices=eventloop.CHOICES,
        default=None,
        help="event loop (default: MEMOIR_LOOP or the runtime's)",
    )
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, and remember the loop for `run` and `loop_name`."""
    global LOOP
    args = p.parse_args()
    LOOP = eventloop.choose(args.loop)
    return args


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """`anyio.run` on the loop --loop chose."""
    return eventloop.run(fn, *args, loop=LOOP)


def loop_name() -> str:
    return eventloop.choose(LOOP)


async def sleep_until(when: float) -> None:
    """Sleep until `time.perf_counter()` reaches `when`, in waits of at least 1 ms.

    uvloop's timers count whole milliseconds and fire a shorter delay at once, so a pacer that
    sleeps for what is left of a millisecond spins: latency.py's generators did, and took the CPU
    of the server they measured (p99 at half the peak read 75-205 ms on uvloop, 13-18 ms after).
    """
    while (left := when - time.perf_counter()) > 0:
        await anyio.sleep(max(left, 0.001))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


@contextlib.contextmanager
def scratch_dir(prefix: str = "memoir-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def line(label: str, value: Any, unit: str = "") -> None:
    shown = f"{value:,.0f}" if isinstance(value, (int, float)) and abs(value) >= 100 else f"{value}"
    print(f"  {label:<44} {shown} {unit}".rstrip(), flush=True)


_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def goal(label: str, value: float, op: str, target: float) -> bool:
    met = _OPS[op](value, target)
    print(f"  goal {label} {op} {target:g}: {value:,.3g} — {'met' if met else 'NOT met'}", flush=True)
    return met


def finish(fields: dict[str, Any]) -> None:
    """The last line: one JSON object with the fields and where it ran."""
    fields = {**fields, "loop": loop_name(), "python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}), flush=True)
