"""One process serving an app as a member of a region: its Service, its NATS door and its Region.

```python
async with region_member(app, journal, nc, RegionSettings(name="eu", regions=("eu", "us"))) as m:
    m.region.view("totals"), await m.region.state("account", "A1")
```

The Service writes the entities whose primary is this region (prefix `{prefix}.r.{region}`, its
streams replicated `streams.replicas` times inside the region's cluster); the NATS door serves
that prefix (what other regions' doors forward to); the Region keeps the replica, the region
door for clients' `{prefix}.cmd.>` and the views. A region of several members is a cluster of
its own (`cluster=`: shards, leases and singletons in buckets named after the region), sharing
the region's journal and view store: each command reaches the entity's owner in the region, the
region's views run once (singletons), a move's release is answered by the entity's owner.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import msgspec
from nats.aio.client import Client as NATS

from ....journal import Journal
from ....model.app import App
from ....streams.publisher import StreamSettings
from ....streams.view_store import PostgresViewStore, ViewStore
from .._service import Service
from ..cluster import ClusterConfig
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
    region's `Primaries` (`Primaries.admits`). In a region of several members (a cluster) the
    member's shard fence is checked first: a turn runs where the region and the shard agree.
    """

    def __init__(self, service: Service, settings: RegionSettings) -> None:
        self.settings = settings
        self.primaries: Primaries | None = None
        self.shards = service.runtime.host.admits  # a cluster member's shard fence: both must admit
        service.runtime.host = dataclasses.replace(service.runtime.host, admits=self)

    def attach(self, primaries: Primaries) -> None:
        self.primaries = primaries

    def __call__(self, entity_type: str, entity_id: str) -> bool:
        if self.shards is not None and not self.shards(entity_type, entity_id):
            return False
        if self.primaries is not None:
            return self.primaries.admits(entity_type, entity_id)
        pinned = self.settings.pinned.get(entity_type)
        return pinned is None or pinned == self.settings.name


def route_commands(service: Service, settings: RegionSettings) -> RegionSender:
    """Before the service starts: its consumers, timers and workflow steps send through a RegionSender
    (`attach` it to the region's connection and primary rule once they exist). In a cluster the
    service's own sender (a `MemberSender`, made as it starts) sends what this region writes."""
    sender = RegionSender(service.runtime, settings)
    service.sender = sender
    service.runtime.route_steps(sender)
    service.wrap_sender = sender.over
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
    cluster: ClusterConfig | None = None,
) -> AsyncIterator[RegionMember]:
    """Serve `app` in `settings.name` until the block ends; the journal is opened by the caller.

    `cluster`: one of the region's several members, sharing the region's journal and view store
    (PostgreSQL): its shards, leases and singletons are the region's own (`RegionSettings.cluster_name`)."""
    # the region in each message id: the replicas keep both regions' events of one seq (a promotion's)
    streams = msgspec.structs.replace(
        streams or StreamSettings(replicas=settings.replicas), msg_id_suffix=f"@{settings.name}"
    )
    prefix = settings.region_prefix()
    service = Service(
        regional_app(app),
        journal,
        nc=nc,
        prefix=prefix,
        streams=streams,
        cluster=cluster,
        take_shards=False,  # once its NATS door serves
        view_store=view_store,
    )
    region = Region(app, nc, settings, streams=streams, view_store=view_store, writer=(service.runtime, journal))
    Fence(service, settings).attach(region.primaries)
    route_commands(service, settings).attach(nc, region.primaries)
    async with service:
        if cluster is not None:
            region.router = service.router
            if isinstance(view_store, PostgresViewStore):  # shared: one member runs each view
                region.run_singleton = service.run_singleton
        async with region, anyio.create_task_group() as tg:
            door = NatsDoor(service.runtime, nc, prefix=prefix, workers=workers, router=service.router)
            await tg.start(door.run)
            try:
                async with service.sharding():  # its shards once its door serves; handed off before it stops
                    yield RegionMember(settings, service, door, region)
            finally:
                with anyio.CancelScope(shield=True):
                    await door.stop()
                tg.cancel_scope.cancel()
