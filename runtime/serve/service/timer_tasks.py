"""The service's timers: the schedule stream, the relay and the firer, each once per cluster.

The service hands in what the timers need (its connection, journal, sender, settings, and
`run_singleton` to run a task once per cluster) rather than itself, so this module never
imports the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio.abc
from nats.aio.client import Client as NATS
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from ...engine.sender import Sender
from ...journal import Journal
from ...streams.publisher import StreamSettings
from ...streams.timer_firing import TimerFirer, TimerRelay, TimerStats, ask_sender, timer_stream_config
from ...wire.nats import ensure_stream

RunSingleton = Callable[[str, Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]
"""`Service.run_singleton`: run the work here; in a cluster, only while holding the lease of that name."""


async def start_timers(
    nc: NATS,
    journal: Journal,
    sender: Sender,
    background: anyio.abc.TaskGroup,
    *,
    prefix: str,
    streams: StreamSettings,
    workflows: frozenset[str],
    run_singleton: RunSingleton,
) -> TimerStats:
    """Create the timers' stream and start the relay and the firer in `background`.

    A firing goes through the member's `sender`, so it reaches the target's owner wherever it is.
    """
    await ensure_stream(nc.jetstream(), timer_stream_config(prefix, streams))
    stats = TimerStats()
    send = ask_sender(sender.ask)
    relay = TimerRelay(journal, nc, prefix=prefix, send=send, stats=stats, workflows=workflows)
    firer = TimerFirer(nc, send, prefix=prefix, stats=stats)
    background.start_soon(run_singleton, "timers.relay", relay.run)
    background.start_soon(run_singleton, "timers.fire", firer.run)
    return stats


class TimerMetrics:
    """Prometheus collector: timers scheduled, cancelled, fired, refused, and how late they fired."""

    def __init__(self, stats: Callable[[], TimerStats | None]) -> None:
        self.stats = stats  # None until the service started its timers

    def collect(self) -> Any:
        stats = self.stats()
        if stats is None:
            return
        for name, value, doc in (
            ("memoir_timers_scheduled", stats.scheduled, "Timer schedules handed to JetStream"),
            ("memoir_timers_cancelled", stats.cancelled, "Timers cancelled"),
            ("memoir_timers_fired", stats.fired, "Timer firings answered by their target"),
            ("memoir_timers_failed", stats.failed, "Timer firings refused by their target (dead-lettered)"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        buckets, total = [], 0
        for bound, n in zip(stats.BUCKETS, stats.late_counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
        yield HistogramMetricFamily(
            "memoir_timer_lateness_seconds",
            "From a timer's due time to its command's answer",
            buckets=buckets,
            sum_value=stats.late_sum,
        )
