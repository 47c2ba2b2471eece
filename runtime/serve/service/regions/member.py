"""One process serving an app as a member of a region: its Service, its NATS door and its Region.

```python
async with region_member(app, journal, nc, RegionSettings(name="eu", regions=("eu", "us"))) as m:
    m.region.view("totals"), await m.region.state("account", "A1")
```

The Service writes the entities whose primary is this region (prefix `{prefix}.r.{region}`, its
streams replicated `streams.replicas` times inside the region's cluster); the NATS door serves
that prefix (what other regions' doors forward to); the Region keeps the replica, the region
door for clients' `{prefix}.cmd.>` and the views. One member per region for now: a region of
several members (shards and leases within the region) is not built yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from nats.aio.client import Client as NATS

from ....journal import Journal
from ....model.app import App
from ....model.errors import ConfigError
from ....streams.publisher import StreamSettings
from ....streams.view_store import ViewStore
from .._service import Service
from ..nats_door import NatsDoor
from .primary import Primaries
from .region import Region, regional_app
from .sending import RegionSender
from .settings import RegionSettings


class Fence:
    """The region's fence inside each turn of a runtime (its `admits`), set before the service starts.

    Checked inside each turn, as a cluster's shard fence is (the refusal is `Moved`: the client sees
    `overloaded`, retry), so a command sent straight to this region's prefix for an entity pinned
    elsewhere stores nothing here. Pinned types from the start; claims once `attach`ed to the
    region's `Primaries` (`Primaries.admits`).
    """

    def __init__(self, service: Service, settings: RegionSettings) -> None:
        if service.runtime.host.admits is not None:
            raise ConfigError("a region member is not a cluster member (one fence per runtime)")
        self.settings = settings
        self.primaries: Primaries | None = None
        service.runtime.host = dataclasses.replace(service.runtime.host, admits=self)

    def attach(self, primaries: Primaries) -> None:
        self.primaries = primaries

    def __call__(self, entity_type: str, entity_id: str) -> bool:
        if self.primaries is not None:
            return self.primaries.admits(entity_type, entity_id)
        pinned = self.settings.pinned.get(entity_type)
        return pinned is None or pinned == self.settings.name


def route_commands(service: Service, settings: RegionSettings) -> RegionSender:
    """Before the service starts: its consumers, timers and workflow steps send through a RegionSender
    (`attach` it to the region's connection and primary rule once they exist)."""
    sender = RegionSender(service.runtime, settings)
    service.sender = sender
    service.runtime.route_steps(sender)
    return sender


@dataclass
class RegionMember:
    settings: RegionSettings
    service: Service
    door: NatsDoor
    region: Region


@contextlib.asynccontextmanager
async def region_member(
    app: App,
    journal: Journal,
    nc: NATS,
    settings: RegionSettings,
    *,
    streams: StreamSettings | None = None,
    view_store: ViewStore | None = None,
    workers: int = 64,
) -> AsyncIterator[RegionMember]:
    """Serve `app` in `settings.name` until the block ends; the journal is opened by the caller."""
    streams = streams or StreamSettings(replicas=settings.replicas)
    prefix = settings.region_prefix()
    service = Service(regional_app(app), journal, nc=nc, prefix=prefix, streams=streams)
    region = Region(app, nc, settings, streams=streams, view_store=view_store, writer=(service.runtime, journal))
    Fence(service, settings).attach(region.primaries)
    route_commands(service, settings).attach(nc, region.primaries)
    async with service, region, anyio.create_task_group() as tg:
        door = NatsDoor(service.runtime, nc, prefix=prefix, workers=workers)
        await tg.start(door.run)
        try:
            yield RegionMember(settings, service, door, region)
        finally:
            with anyio.CancelScope(shield=True):
                await door.stop()
            tg.cancel_scope.cancel()
