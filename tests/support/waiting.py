"""The one way a test waits for something: poll a check until a deadline, never a fixed sleep."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

POLL = 0.05  # seconds between checks


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll until `check()` (sync or async) is true; fail naming `what` after `timeout` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(POLL)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def eventually_sync(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """`eventually` for a test that is not async (one driving a process)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)
