"""The service's timers: the schedule stream, the relay and the firer, each once per cluster.

The service hands in what the timers need (its connection, journal, runtime, settings, and
`run_singleton` to run a task once per cluster) rather than itself, so this module never
imports the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio.abc
from nats.aio.client import Client as NATS
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from ...engine.runtime import Runtime
from ...journal import Journal
from ...streams.publisher import StreamSettings
from ...streams.timer_firing import Send, TimerFirer, TimerRelay, TimerStats, ask_sender, timer_stream_config
from ...wire.nats import ensure_stream
from ...wire.protocol import Reply
from .client import Client

RunSingleton = Callable[[str, Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]
"""`Service.run_singleton`: run the work here; in a cluster, only while holding the lease of that name."""

FIRE_TIMEOUT = 30.0  # seconds a fired command may take in a cluster (a workflow step, say)


def _cluster_sender(client: Client) -> Send:
    """In a cluster the firer sends over NATS: the NATS door routes each command to its owner."""

    async def send(
        entity_type: str, entity_id: str, command: str, args: bytes, *, command_id: str, causation_id: str
    ) -> Reply:
        return await client.send(entity_type, entity_id, command, args, command_id=command_id, timeout=FIRE_TIMEOUT)

    return send


def _routed(client: Client) -> Any:
    async def ask(entity_type: str, entity_id: str, command: str, args: Any = None, **meta: Any) -> Reply:
        cid = meta.get("command_id")
        return await client.send(entity_type, entity_id, command, args, command_id=cid, timeout=FIRE_TIMEOUT)

    return ask


async def start_timers(
    nc: NATS,
    journal: Journal,
    runtime: Runtime,
    background: anyio.abc.TaskGroup,
    *,
    prefix: str,
    streams: StreamSettings,
    clustered: bool,
    run_singleton: RunSingleton,
) -> TimerStats:
    """Create the timers' stream and start the relay and the firer in `background`."""
    await ensure_stream(nc.jetstream(), timer_stream_config(prefix, streams))
    stats = TimerStats()
    if clustered:
        client = Client(nc=nc, prefix=prefix)
        send = _cluster_sender(client)
        runtime.route_steps(_routed(client))  # a workflow step's target may live on another member
    else:
        send = ask_sender(runtime.ask)
    relay = TimerRelay(journal, nc, prefix=prefix, send=send, stats=stats, workflows=runtime.workflow_types)
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
