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
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from nats.aio.client import Client as NATS

from ....journal import Journal
from ....model.app import App
from ....streams.publisher import StreamSettings
from ....streams.view_store import ViewStore
from .._service import Service
from ..nats_door import NatsDoor
from .region import Region, regional_app
from .settings import RegionSettings


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
    async with (
        Service(regional_app(app), journal, nc=nc, prefix=prefix, streams=streams) as service,
        Region(app, nc, settings, streams=streams, view_store=view_store) as region,
        anyio.create_task_group() as tg,
    ):
        door = NatsDoor(service.runtime, nc, prefix=prefix, workers=workers)
        await tg.start(door.run)
        try:
            yield RegionMember(settings, service, door, region)
        finally:
            with anyio.CancelScope(shield=True):
                await door.stop()
            tg.cancel_scope.cancel()
