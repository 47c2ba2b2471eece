"""Background work that outlives a passing outage: the service's long-running tasks restarted with backoff.

The publisher, views, consumers and timers run until the service stops. A NATS node that is
paused or restarting, a JetStream leader election ("JetStream system temporarily unavailable"),
or storage that went away for a moment makes one of their calls fail; that must not end the
process (every member of a cluster saw the same 503 and all of them exited). As Akka's backoff
supervisor does, such a failure restarts the task after a growing pause; each task resumes from
its own checkpoint, so a restart repeats nothing that was done. Anything else is a bug and still
ends the service, loudly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog
from nats.errors import Error as NatsError

from ...model.backoff import Backoff
from ...model.errors import JournalError

log = structlog.get_logger("memoir.service")

# What a passing outage raises: NATS and JetStream errors (time-outs included), storage errors.
TRANSIENT: tuple[type[BaseException], ...] = (NatsError, JournalError, TimeoutError, ConnectionError)
STEADY_S = 30.0  # a task that ran this long before failing starts again from the first pause


async def supervised(name: str, work: Callable[[], Awaitable[None]], *, retry: Backoff | None = None) -> None:
    """Run `work` until it returns; restart it after a pause whenever it fails with a transient error."""
    retry = retry or Backoff(0.5, cap=10.0)
    while True:
        started = anyio.current_time()
        try:
            await work()
            return
        except TRANSIENT as exc:
            if anyio.current_time() - started > STEADY_S:
                retry.reset()
            pause = retry.next()
            log.warning("background task failed; restarting it", task=name, error=repr(exc), retry_in_s=round(pause, 2))
            await anyio.sleep(pause)
