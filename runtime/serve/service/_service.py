"""A service: the runtime plus everything that moves its events — publisher, views, consumers.

```python
async with EmbeddedNats() as nats_server, open_journal(url) as journal, \\
        Service(app, journal, nats_url=nats_server.url) as svc:
    await svc.runtime.ask("post", "p1", "publish", {"author": "ann", "text": "hi"})
    await svc.view("posts_by_author").get("ann")
```

Start-up order: connect to NATS, create the streams, start the runtime, then
the publisher, views and consumers. Shutdown runs it backwards: consumers stop
sending, the publisher flushes what was appended, the runtime finishes its
turns, the connection drains.

Consumers, timers and workflow steps send through `Service.sender`: the runtime alone,
in a cluster a `MemberSender` that reaches each entity's owner wherever it is.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import structlog
from nats.aio.client import Client as NATS

from ...engine.runtime import Runtime
from ...engine.sender import Sender
from ...journal import Journal
from ...model.app import App
from ...model.errors import ConfigError
from ...streams._runner import StreamResolver, event_streams
from ...streams.consumer import ConsumerRunner, ensure_dead_letter_stream
from ...streams.publisher import Publisher, Publishers, StreamSettings, ensure_stream, partition_name
from ...streams.timer_firing import TimerStats
from ...streams.view import ViewQuery, ViewRunner
from ...streams.view_store import MemoryViewStore, PostgresViewStore, ViewStore
from ...wire.auth import NatsAuth
from ...wire.nats import close_quietly, connect
from ...wire.protocol import check_prefix
from .cluster import Cluster, ClusterConfig, ShardManager
from .cluster.routing import ShardRouter
from .sending import MemberSender
from .supervision import supervised
from .timer_tasks import start_timers
from .view_keeper import ViewKeeper

log = structlog.get_logger("memoir.service")

SHARED_JOURNALS = ("postgresql", "postgres", "nats", "tls")
INSIDE_TIMEOUT = 30.0  # seconds a member's own command (a consumer's, a timer's, a step's) is routed and awaited
HANDOFF_GRACE = 0.5  # seconds: usually more than a lease change takes to reach every member (spares re-routes)


class Service:
    """The runtime plus the publisher, views and consumers of one app, on one NATS connection."""

    def __init__(
        self,
        app: App,
        journal: Journal,
        *,
        nats_url: str | None = None,
        nc: NATS | None = None,
        prefix: str = "memoir",
        view_store: ViewStore | None = None,
        streams: StreamSettings | None = None,
        publish: bool = True,
        flush_timeout: float = 30.0,
        cluster: ClusterConfig | None = None,
        take_shards: bool = True,
        nats_auth: NatsAuth | None = None,
        **runtime_options: Any,
    ) -> None:
        if (nats_url is None) == (nc is None):
            raise ValueError("give exactly one of nats_url and nc")
        self.app = app
        self.journal = journal
        self.nats_url = nats_url
        self.nats_auth = nats_auth
        self.nc = nc
        self.prefix = check_prefix(prefix)
        self.view_store = view_store or MemoryViewStore()
        self.streams = streams or StreamSettings()
        self.publish = publish
        self.flush_timeout = flush_timeout
        self.cluster_config = cluster
        self._take_shards_on_start = take_shards
        self._sharding = False
        self.cluster: Cluster | None = None
        self.router: ShardRouter | None = None
        self.shards: ShardManager | None = None
        admits = self._admits if cluster is not None else None
        self.runtime = Runtime(app, journal, admits=admits, **runtime_options)
        self.sender: Sender = self.runtime  # how anything inside sends a command; a cluster's routes (_start)
        self.wrap_sender: Callable[[Sender], Sender] | None = None  # around a cluster's sender (regions)
        self.publisher: Publishers | None = None  # one partition per entity type, each a singleton
        self.views: dict[str, ViewRunner] = {}
        self.consumers: dict[str, ConsumerRunner] = {}
        self.timers: TimerStats | None = None  # counts of the timer relay and firer, once started
        self.stream_for: StreamResolver = event_streams(self.prefix, journal)
        self._stack: contextlib.AsyncExitStack | None = None
        self._views = ViewKeeper()  # runs each view, stops and rebuilds it on `replay`

    def view(self, name: str) -> ViewQuery[Any]:
        try:
            return self.views[name].query
        except KeyError:
            raise KeyError(f"no view {name!r} (known: {sorted(self.views)})") from None

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        if self.nc is None:
            assert self.nats_url is not None  # the constructor takes exactly one of nc and nats_url
            self.nc = await connect(
                self.nats_url,
                auth=self.nats_auth,
                timeout=10,
                name=f"memoir-{self.app.name}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # a cluster node that went away: try the next at once
            )
            stack.push_async_callback(close_quietly, self.nc)
        js = self.nc.jetstream()
        types = sorted(self.runtime.models)
        if types and self.journal.event_stream(types[0]) is not None:  # the journal is the stream: no outbox
            if self.journal.prefix != self.prefix:
                raise ConfigError(f"the journal's prefix {self.journal.prefix!r} is not the service's {self.prefix!r}")
            self.publish = False
        else:
            for t in types:
                await ensure_stream(js, self.prefix, t, self.streams)
        await ensure_dead_letter_stream(js, self.prefix, self.streams)
        if self.cluster_config is not None:
            await self._join(stack)
        await stack.enter_async_context(self.runtime)
        if self.cluster is not None:  # after the runtime: on the way out shards are handed off first
            self.router = ShardRouter(self.cluster, self.runtime)
            self.shards = ShardManager(self.cluster, on_lost=self.router.release, on_release=self.router.release)
            self.router.attach(self.shards)
            self.sender = MemberSender(self.runtime, self.nc, self.router, prefix=self.prefix, timeout=INSIDE_TIMEOUT)
            if self.wrap_sender is not None:  # a region member's: it sends to other regions, this one to the owner
                self.sender = self.wrap_sender(self.sender)
            self.runtime.route_steps(self.sender)  # before any command: a step's target may live on another member
            if self._take_shards_on_start:
                self._sharding = True
                await stack.enter_async_context(self.shards)

        background = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(background.cancel_scope.cancel)
        self._register_singletons(types)
        if self.publish:
            partitions = {
                t: Publisher(self.journal, self.nc, prefix=self.prefix, settings=self.streams, only=t) for t in types
            }
            self.publisher = Publishers(partitions, runs=self.runs)
            for t, partition in partitions.items():
                background.start_soon(self.run_singleton, partition_name(t), partition.run)
            stack.push_async_callback(self._flush)
        self.timers = await start_timers(
            self.nc,
            self.journal,
            self.sender,
            background,
            prefix=self.prefix,
            streams=self.streams,
            workflows=self.runtime.workflow_types,
            run_singleton=self.run_singleton,
        )
        for view in self.app.views:
            runner = self.views[view.name] = ViewRunner(
                view,
                self.view_store,
                self.nc,
                prefix=self.prefix,
                streams=self.stream_for,
                keys=self.runtime.keys,
                journal=self.journal,  # co-located: a view far behind catches up from it
            )
            background.start_soon(self.run_singleton, f"view.{view.name}", functools.partial(self._views.keep, runner))
        consumers = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(consumers.cancel_scope.cancel)  # first to stop: no new commands from consumers
        for consumer in self.app.consumers:
            crunner = self.consumers[consumer.name] = ConsumerRunner(
                consumer, self.sender, self.nc, prefix=self.prefix, streams=self.stream_for, keys=self.runtime.keys
            )
            consumers.start_soon(self.run_singleton, f"consumer.{consumer.name}", crunner.run)

    async def _join(self, stack: contextlib.AsyncExitStack) -> None:
        assert self.cluster_config is not None and self.nc is not None
        scheme = self.journal.url.split(":", 1)[0].lower()
        if scheme not in SHARED_JOURNALS:
            raise ConfigError(
                f"a cluster needs a journal every member shares: postgresql:// or nats://, not {scheme}://"
                " (a SQLite or memory journal belongs to one process)"
            )
        if self.app.views and not isinstance(self.view_store, PostgresViewStore):
            raise ConfigError(
                "a cluster's views need a view store every member shares: postgresql://…"
                f" (got {type(self.view_store).__name__}; set MEMOIR_VIEW_STORE_URL or --view-store)"
            )
        self.cluster = await stack.enter_async_context(
            Cluster.join(self.nc, self.cluster_config, meta={"app": self.app.name})
        )

    def _register_singletons(self, types: list[str]) -> None:
        """Tell the cluster every singleton name before any runs: placement balances over them all."""
        if self.cluster is None:
            return
        names = [partition_name(t) for t in types] if self.publish else []
        names += ["timers.relay", "timers.fire"]
        names += [f"view.{v.name}" for v in self.app.views] + [f"consumer.{c.name}" for c in self.app.consumers]
        for name in names:
            self.cluster.singleton(name)

    async def run_singleton(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` here; in a cluster, only while this process holds the singleton lease `name`."""
        task = functools.partial(supervised, name, work)  # a passing outage restarts it, never ends the process
        if self.cluster is None:
            await task()
        else:
            await self.cluster.singleton(name).run(task)

    async def take_shards(self) -> None:
        """In a cluster, be counted for shards from now on (`Service(take_shards=False)`).

        For a front door started after the service: call this once it takes commands, in the
        scope of `async with Service(...)` (from inside the door's task groups, use
        `sharding()`). A member that is given shards before then stalls their commands: its
        peers forward them to it and find no one, until their senders give up. Idempotent; a
        no-op outside a cluster.
        """
        if self.shards is None or self._sharding:
            return
        assert self._stack is not None, "take_shards() inside `async with Service(...)`"
        self._sharding = True
        await self._stack.enter_async_context(self.shards)  # left first: the shards go before the rest stops

    @contextlib.asynccontextmanager
    async def sharding(self) -> AsyncIterator[None]:
        """`take_shards()` for a block, whose end hands the shards off (if `hand_off()` has not).

        For a front door that runs in task groups of its own, as `memoir run`'s: the shard
        manager's task group is then entered and left inside them, so scopes nest. Given to the
        service's exit instead, it would be left after them, out of order: anyio refuses that,
        and a process stopping that way exits 1. A no-op outside a cluster or once taken.
        """
        if self.shards is None or self._sharding:
            yield
            return
        self._sharding = True
        async with self.shards:
            yield

    def runs(self, name: str) -> bool:
        """Whether this process runs the singleton `name` (always, outside a cluster)."""
        if self.cluster is None:
            return True
        singleton = self.cluster.singletons.get(name)
        return singleton is not None and singleton.holding

    async def hand_off(self) -> None:
        """Give this member's shards to the others (turns in flight finish first); a no-op alone."""
        if self.shards is not None:
            await self.shards.stop()
            # Members that saw our leases a moment ago may still forward to us: we pass those on
            # (the NATS door's forward subscription outlives the shards) for a while. Not a
            # guarantee (a loaded member may see the change later): a forward that arrives after
            # the subscription is gone gets "no responders" and its sender routes it again.
            await anyio.sleep(HANDOFF_GRACE)

    def _admits(self, entity_type: str, entity_id: str) -> bool:
        return self.router is not None and self.router.admits(entity_type, entity_id)

    async def replay(self, name: str) -> bool:
        """Rebuild a view from the start of its streams while the service keeps running.

        False when another process of the cluster runs that view (it is the one to rebuild it).
        """
        runner = self.views.get(name)
        if runner is None:
            raise KeyError(f"no view {name!r} (known: {sorted(self.views)})")
        if not self.runs(f"view.{name}"):
            return False
        await self._views.rebuild(name)
        return True

    async def _flush(self) -> None:
        """Publish what was appended, by the partitions running here (another member runs the
        others: our appends are in the shared journal for it)."""
        assert self.publisher is not None
        try:
            await self.publisher.flush(self.flush_timeout)
        except TimeoutError:
            log.warning(
                "publisher not flushed on shutdown; it resumes from its checkpoint next start",
                lag=await self.publisher.lag(),
            )

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(et, e, tb)
