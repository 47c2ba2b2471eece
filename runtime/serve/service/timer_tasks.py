"""The service's timers: the schedule stream, the relay and the firer, each once per cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.abc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from ...streams.timers import Send, TimerFirer, TimerRelay, TimerStats, ask_sender, timer_stream_config
from ...wire.nats import ensure_stream
from ...wire.protocol import Reply
from .client import Client

if TYPE_CHECKING:
    from ._service import Service

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


async def start_timers(svc: Service, background: anyio.abc.TaskGroup) -> TimerStats:
    """Create the timers' stream and start the relay and the firer in `background`."""
    assert svc.nc is not None
    await ensure_stream(svc.nc.jetstream(), timer_stream_config(svc.prefix, svc.streams))
    stats = TimerStats()
    if svc.cluster_config is None:
        send = ask_sender(svc.runtime.ask)
    else:
        client = Client(nc=svc.nc, prefix=svc.prefix)
        send = _cluster_sender(client)
        svc.runtime.step_ask = _routed(client)  # a workflow step's target may live on another member
    relay = TimerRelay(
        svc.journal, svc.nc, prefix=svc.prefix, send=send, stats=stats, workflows=svc.runtime.workflow_types
    )
    firer = TimerFirer(svc.nc, send, prefix=svc.prefix, stats=stats)
    background.start_soon(svc._once, "timers.relay", relay.run)
    background.start_soon(svc._once, "timers.fire", firer.run)
    return stats


class TimerMetrics:
    """Prometheus collector: timers scheduled, cancelled, fired, refused, and how late they fired."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def collect(self) -> Any:
        stats = self.svc.timers
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
