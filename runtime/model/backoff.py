"""Exponential backoff, written once: every retry loop in the runtime waits through one of these.

It lives in the model layer, the lowest, so every layer can use it (a workflow's `Recovery`
too). The arithmetic is pure; `sleep()` only waits on the event loop's clock (anyio), it does
no I/O. Each caller keeps its own numbers (a first delay of 0.05 or 0.1 s, a cap of 1, 2 or 5 s):
they say how long that loop may sit out a fault, so they are not shared.

```python
retry = Backoff(0.1, cap=5.0)
while True:
    try:
        await work()
        retry.reset()
    except Unavailable:
        await retry.sleep()  # 0.1, 0.2, 0.4 … 5, 5 s
```
"""

from __future__ import annotations

import math
import random

import anyio

_SHARED = random.Random()  # seeding one per Backoff reads the OS's entropy; a lease renewal makes one


class Backoff:
    """Delays growing by `factor` from `initial` up to `cap`; `jitter` (0..1) draws each from [d·(1-jitter), d]."""

    __slots__ = ("_delay", "_random", "cap", "factor", "initial", "jitter")

    def __init__(
        self,
        initial: float,
        *,
        cap: float = math.inf,
        factor: float = 2.0,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial < 0 or cap < 0 or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError(
                f"Backoff({initial}, cap={cap}, factor={factor}, jitter={jitter}): want delays >= 0,"
                " factor >= 1 and jitter within 0..1"
            )
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._random = rng or _SHARED
        self._delay = min(initial, cap)

    def reset(self) -> None:
        """After a success: the next failure waits `initial` again."""
        self._delay = min(self.initial, self.cap)

    def next(self) -> float:
        """The delay to wait now; the one after grows by `factor`, up to `cap`."""
        delay = self._delay
        self._delay = min(delay * self.factor, self.cap)
        return self._jittered(delay)

    def at(self, attempt: int) -> float:
        """The delay before retry number `attempt` (1 is the first), for callers that count attempts themselves."""
        try:
            delay = self.initial * self.factor ** (max(attempt, 1) - 1)
        except OverflowError:  # thousands of attempts: far past any cap
            delay = math.inf
        return self._jittered(min(delay, self.cap))

    async def sleep(self) -> None:
        """Wait `next()` seconds."""
        await anyio.sleep(self.next())

    def _jittered(self, delay: float) -> float:
        return delay * (1 - self.jitter * self._random.random()) if self.jitter else delay
