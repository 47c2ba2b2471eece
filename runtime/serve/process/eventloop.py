"""Which asyncio event loop a process runs on: uvloop where it installs, asyncio's own otherwise.

uvloop runs nats-py and asyncpg unchanged and takes a large share off each message's cost
(the loop's own scheduling, the socket reads and writes). It is a dependency on CPython outside
Windows; where it is missing (PyPy, Windows, a build without it) `auto` falls back to the
standard loop, and only an explicit `uvloop` is an error. Chosen by `--loop` or `MEMOIR_LOOP`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar, TypeVarTuple

import anyio

from ...model.errors import ConfigError

Loop = Literal["uvloop", "asyncio"]
CHOICES = ("auto", "uvloop", "asyncio")
ENV = "MEMOIR_LOOP"
DEFAULT = "auto"

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def choose(requested: str | None = None, env: Mapping[str, str] | None = None) -> Loop:
    """`requested` (a flag), else MEMOIR_LOOP, else `auto`: uvloop when it is installed."""
    value = (requested or (os.environ if env is None else env).get(ENV) or DEFAULT).strip().lower()
    if value not in CHOICES:
        raise ConfigError(f"bad setting: loop must be one of {', '.join(CHOICES)}, not {value!r}")
    if value == "asyncio":
        return "asyncio"
    if uvloop_available():
        return "uvloop"
    if value == "uvloop":
        raise ConfigError("bad setting: loop uvloop asked for, but uvloop is not installed (pip install uvloop)")
    return "asyncio"


def backend_options(loop: Loop) -> dict[str, Any]:
    """anyio's asyncio backend options for `loop`."""
    return {"use_uvloop": loop == "uvloop"}


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, loop: str | None = None) -> T:
    """`anyio.run` on the chosen loop (see `choose`)."""
    return anyio.run(fn, *args, backend="asyncio", backend_options=backend_options(choose(loop)))


def current() -> str:
    """The running loop's kind, for logs and benchmark lines."""
    import asyncio

    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
