"""Prometheus metrics and health probes for a running service, on a small anyio HTTP endpoint.

Command counts and latencies are recorded as commands are served; everything
else (live actors, journal batch sizes, publisher lag, view lag, each consumer's lag, counts
and parked events, shards) is read
at scrape time, so the command path pays nothing for it.

`GET /healthz` answers 200 while the process (its event loop) is alive; `GET /readyz`
answers 200 once it is connected to NATS and serving (in a cluster: a live member),
503 otherwise, for orchestrators' probes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from ...streams._pull import consumer_name
from ...streams.dead_letters import DeadLetters
from .timer_tasks import TimerMetrics

if TYPE_CHECKING:
    from ._service import Service


class _BatchSizes:
    """Exports the journal Batcher's size buckets as a histogram (if the journal has one)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Any:
        batcher = getattr(self.service.journal, "_writes", None)
        if batcher is None:
            return
        buckets, total = [], 0
        for i, n in enumerate(batcher.sizes):
            total += n
            buckets.append((str(2**i) if i < 15 else "+Inf", total))
        if buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", total))
        yield HistogramMetricFamily(
            "memoir_journal_batch_size",
            "Appends per group-commit transaction",
            buckets=buckets,
            sum_value=batcher.requests,
        )


class _ConsumerCounts:
    """Each consumer's counters, read from its runner at scrape time (in a cluster: the member running it)."""

    FIELDS = (
        ("handled", "Events a consumer handled"),
        ("retried", "Consumer handler failures retried with backoff"),
        ("dead_lettered", "Events a consumer parked on its dead-letter subject"),
        ("refused", "Refusals a consumer's handler let escape (parked without retries)"),
    )

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Any:
        for field, help in self.FIELDS:
            family = CounterMetricFamily(f"memoir_consumer_{field}", help, labels=["consumer"])
            for name, runner in self.service.consumers.items():
                family.add_metric([name], getattr(runner, field))
            yield family


class Metrics:
    """The `/metrics`, `/healthz` and `/readyz` endpoint of one service."""

    def __init__(self, service: Service, *, serving: Callable[[], bool] | None = None) -> None:
        self.service = service
        self.serving = serving  # whether the NATS door takes commands
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "memoir_commands",
            "Commands served, by entity type, command and outcome",
            ["entity_type", "command", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "memoir_command_seconds",
            "Command latency as served over NATS",
            ["entity_type"],
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.live_actors = Gauge("memoir_live_actors", "Entity actors in memory", registry=r)
        self.publisher_lag = Gauge("memoir_publisher_lag", "Journal positions not yet published", registry=r)
        self.view_lag = Gauge("memoir_view_lag", "Stream messages a view has not applied yet", ["view"], registry=r)
        self.shards_owned = Gauge("memoir_cluster_shards_owned", "Shards this member holds", registry=r)
        self.forwards = Gauge("memoir_cluster_forwards", "Commands forwarded to the owning member", registry=r)
        self.handoffs = Gauge("memoir_cluster_handoffs", "Shard leases handed to a successor", registry=r)
        self.lease_losses = Gauge("memoir_cluster_lease_losses", "Shard leases lost for want of renewal", registry=r)
        self.renewals = Gauge("memoir_cluster_lease_renewals", "Lease renewals written", registry=r)
        self.renewal_failures = Gauge("memoir_cluster_lease_renewal_failures", "Lease renewals that failed", registry=r)
        self.consumer_lag = Gauge(
            "memoir_consumer_lag", "Stream messages a consumer has not handled yet", ["consumer"], registry=r
        )
        self.parked = Gauge("memoir_consumer_parked", "Events a consumer has parked now", ["consumer"], registry=r)
        r.register(_ConsumerCounts(service))
        self.forwarded: Callable[[], int] = lambda: 0
        r.register(_BatchSizes(service))
        r.register(TimerMetrics(lambda: service.timers))
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, entity_type: str, command: str, outcome: str, seconds: float) -> None:
        key = (entity_type, command, outcome)
        pair = self._children.get(key)
        if pair is None:
            if len(self._children) > 10_000:  # unknown types/commands from outside must not grow this forever
                key = ("other", "other", outcome)
            pair = self._children[key] = (self.commands.labels(*key), self.latency.labels(key[0]))
        pair[0].inc()
        pair[1].observe(seconds)

    async def refresh(self) -> None:
        svc = self.service
        self.live_actors.set(svc.runtime.live_actors)
        if svc.shards is not None:
            self.shards_owned.set(len(svc.shards.held()))
            self.handoffs.set(svc.shards.handoffs)
            self.lease_losses.set(svc.shards.losses)
            self.renewals.set(svc.shards.leases.renewals)
            self.renewal_failures.set(svc.shards.leases.renewal_failures)
            self.forwards.set(self.forwarded())
        if svc.publisher is not None:
            self.publisher_lag.set(await svc.publisher.lag())
        js = svc.nc.jetstream() if svc.nc is not None else None
        for name, runner in svc.views.items():
            if js is None:
                break
            behind = 0
            for entity_type in runner.table.sources:
                info = await js.stream_info(runner.streams(entity_type))
                behind += max(0, info.state.last_seq - runner.checkpoint(entity_type))
            self.view_lag.labels(name).set(behind)
        if js is not None and svc.consumers:
            await self._refresh_consumers(js)

    async def _refresh_consumers(self, js: Any) -> None:
        letters = DeadLetters(js, self.service.prefix)
        for name, runner in self.service.consumers.items():
            behind = 0
            for entity_type in runner.sources:
                try:
                    info = await js.consumer_info(runner.streams(entity_type), consumer_name(name, entity_type))
                except NotFoundError:  # not started yet: nothing pulled, nothing known
                    continue
                behind += info.num_pending + info.num_ack_pending
            self.consumer_lag.labels(name).set(behind)
            self.parked.labels(name).set(await letters.count(name))

    def ready(self) -> bool:
        svc = self.service
        if svc.nc is None or not svc.nc.is_connected or (self.serving is not None and not self.serving()):
            return False
        return svc.cluster is None or svc.cluster.member_id in svc.cluster.membership.live()

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)

    async def serve(
        self, port: int, host: str = "127.0.0.1", *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve `GET /metrics` until cancelled; reports the bound port (0 picks a free one)."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    request = await stream.receive(4096)
                    if request.startswith(b"GET /metrics"):
                        body, status, ctype = await self.render(), b"200 OK", b"text/plain; version=0.0.4"
                    elif request.startswith(b"GET /healthz"):
                        body, status, ctype = b"ok\n", b"200 OK", b"text/plain"
                    elif request.startswith(b"GET /readyz"):
                        ok = self.ready()
                        body = b"ready\n" if ok else b"not ready\n"
                        status, ctype = (b"200 OK" if ok else b"503 Service Unavailable"), b"text/plain"
                    else:
                        body, status, ctype = b"see /metrics, /healthz, /readyz\n", b"404 Not Found", b"text/plain"
                    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    await stream.send(head % (status, ctype, len(body)) + body)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
