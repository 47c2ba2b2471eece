"""A region's part of a process, beside its `Service`: the replica, the door, views and reads over the replica.

```python
settings = RegionSettings(name="eu", regions=("eu", "us"), pinned={"account": "eu"})
async with (
    Service(regional_app(app), journal, nc=nc, prefix=settings.region_prefix(), streams=StreamSettings(replicas=3)),
    Region(app, nc, settings) as region,
):
    ...  # plus a NatsDoor(service.runtime, nc, prefix=settings.region_prefix()) for the region's own commands
```

The `Service` writes the entities whose primary is this region and publishes their events under
the region's prefix; `Region` keeps the region's replica stream (every region's events), runs
the door that sends each client command to its entity's primary region, and runs the app's
views over the replica, so a view here sees every entity of its sources, whichever region
writes it. `state` and `events` read the replica (eventually consistent: `replica.py`).
Consumers stay on the Service and see this region's own entities only (not built yet: a
consumer that reacts to other regions' events and sends commands through the door).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import anyio
from nats.aio.client import Client as NATS

from ....engine.history import HistoryItem, history, state_at
from ....engine.runtime import Runtime
from ....journal import Journal
from ....model.app import App
from ....model.entity import model_of
from ....streams.publisher import StreamSettings
from ....streams.view import ViewQuery, ViewRunner
from ....streams.view_store import MemoryViewStore, ViewStore
from ..forwarding import Router
from ..supervision import supervised
from ..view_keeper import ViewKeeper
from .door import RegionDoor
from .moves import MoveDoor
from .orphans import Orphans, ReplicaViewRunner
from .primary import Primaries
from .replica import ReplicaJournal
from .replication import ensure_replica, source_stream
from .settings import RegionSettings

FOLLOW_TIMEOUT = 10.0  # seconds a region waits at start for the claims' first read (then serves anyway)


def regional_app(app: App) -> App:
    """The app a region's `Service` runs: its views run over the replica (`Region`), not the local streams."""
    return dataclasses.replace(app, views=())


class Region:
    """`async with Region(app, nc, settings) as region:` — see the module's docstring."""

    def __init__(
        self,
        app: App,
        nc: NATS,
        settings: RegionSettings,
        *,
        view_store: ViewStore | None = None,
        streams: StreamSettings | None = None,
        door: bool = True,
        writer: tuple[Runtime, Journal] | None = None,
        router: Router | None = None,
        run_singleton: Callable[[str, Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.app = app
        self.nc = nc
        self.settings = settings
        self.view_store = view_store or MemoryViewStore()
        self.streams = streams
        self.types = [model_of(e).type_name for e in app.entities]
        self.primaries = Primaries(nc, settings)
        self.door = RegionDoor(nc, settings, self.primaries) if door else None
        self.writer = writer  # the region's runtime and journal: it serves moves (`moves.py`)
        self.router = router  # a region of several members: who owns an entity in the region (moves)
        self.run_singleton = run_singleton  # ... and the views run where the cluster's singleton lease says
        self.stream = ""
        self.journal: ReplicaJournal | None = None
        self.views: dict[str, ViewRunner] = {}
        self.orphans: Orphans | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._views = ViewKeeper()  # runs each view, stops and rebuilds it on `replay`

    @property
    def lost(self) -> dict[tuple[str, str], list[int]]:
        """(type, id) -> the seqs this region wrote that a promotion left out of the entity's history
        (the RPO, named here and in a warning when the region learns of the promotion: `orphans.py`)."""
        return dict(self.orphans.lost) if self.orphans is not None else {}

    async def __aenter__(self) -> Self:
        self.stream = await _ensure(self.nc, self.settings, self.types, self.streams)
        origins = {source_stream(self.settings, r, t): r for r in self.settings.regions for t in self.types}
        journal = self.journal = ReplicaJournal(
            self.nc, self.stream, prefix=self.settings.prefix, provenance=self.primaries, origins=origins
        )
        for view in self.app.views:
            self.views[view.name] = ReplicaViewRunner(
                view,
                self.view_store,
                self.nc,
                prefix=self.settings.prefix,
                streams=journal.event_stream,
                replica=journal,
            )
        orphans = self.orphans = Orphans(
            self.settings.name,
            journal,
            self.writer[1] if self.writer is not None else None,
            self.primaries,
            self.views,
            self.view_store,
            self.replay,
        )
        self.primaries.on_epochs.append(orphans.tell)
        await self.primaries.start()
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            tg.start_soon(supervised, "region claims", self.primaries.follow)
            with anyio.move_on_after(FOLLOW_TIMEOUT):  # a returning region learns what moved away before it serves
                await self.primaries.followed.wait()
            await orphans.drain()  # names the lost events; each view is checked as it starts (`_keep_view`)
            tg.start_soon(orphans.run)
            if self.door is not None:
                await tg.start(self.door.run)
            if self.writer is not None:
                runtime, own = self.writer
                moves = MoveDoor(self.nc, self.settings, runtime, own, journal, self.primaries, router=self.router)
                await tg.start(moves.run)
            for name, runner in self.views.items():
                keep = functools.partial(self._keep_view, runner)
                if self.run_singleton is None:
                    tg.start_soon(supervised, f"region view {name}", keep)
                else:  # one member of the region runs it: the views' store is the region's, shared
                    tg.start_soon(self.run_singleton, f"region.view.{name}", keep)
        except BaseException:
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                orphans.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            if self.orphans is not None:
                self.orphans.close()

    async def _keep_view(self, runner: ViewRunner) -> None:
        """Run a view; `replay` stops it, rebuilds it from the replica and runs it again."""
        name = runner.view.name
        assert self.orphans is not None
        self.orphans.running.add(name)
        try:
            await self.orphans.check_view(name)  # it may have applied events a promotion has since left out
            await self._views.keep(runner)
        finally:
            self.orphans.running.discard(name)

    async def replay(self, name: str) -> None:
        """Rebuild a view of this region from its replica (it runs again after)."""
        runner = self.views[name]
        if self.orphans is None or name not in self.orphans.running:  # not kept now: nothing runs it meanwhile
            await runner.rebuild()
            return
        await self._views.rebuild(name)  # its keeper rebuilds it, before its first run if it has not run yet

    def view(self, name: str) -> ViewQuery[Any]:
        return self.views[name].query

    def _journal(self) -> ReplicaJournal:
        if self.journal is None:
            raise RuntimeError("use `async with Region(...)` first")
        return self.journal

    async def state(self, entity_type: str, entity_id: str, *, seq: int | None = None) -> tuple[Any, int]:
        """The entity's state as this region's replica has it: (state, seq of the last event read)."""
        return await state_at(self._journal(), model_of(self.app.entity(entity_type)), entity_id, seq=seq)

    async def events(self, entity_type: str, entity_id: str) -> list[HistoryItem]:
        """The entity's history as this region's replica has it, each event with the state after it."""
        model = model_of(self.app.entity(entity_type))
        return [item async for item in history(self._journal(), model, entity_id)]


async def _ensure(nc: NATS, settings: RegionSettings, types: list[str], streams: StreamSettings | None) -> str:
    return await ensure_replica(nc.jetstream(timeout=10.0), settings, types, streams)
