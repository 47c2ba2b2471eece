"""Replication between regions: JetStream sourcing, no protocol of Memoir's own.

Each region's members publish their events to their own per-type streams (the outbox's
`{PREFIX}_R_{REGION}_EVENTS_{TYPE}`: the publisher's `Nats-Expected-Last-Sequence` needs it to be the
only writer). Each region keeps one more stream, its replica: placed in its own cluster,
with no subjects of its own, sourcing every region's type streams (its own included) with a
subject transform from `{prefix}.r.{region}.events.{type}.*` to `{prefix}.events.{type}.*`, so
views and readers in the region follow one stream with one subject shape whoever wrote.

What sourcing gives: each source is read in order from where the replica left off (the server
tracks each source's sequence, so a source's message is stored once), across the gateway,
resumed after a cut by the server itself; a message keeps its headers. The replica hardly
dedupes by `Nats-Msg-Id` (its duplicate window is `REPLICA_DUPLICATE_WINDOW`, the server's least):
each source stream has dedupe by it already, and a region's publisher names its region in each
id (`{type}/{id}/{seq}@{region}`), so two regions' events of one seq, which happen only after a
promotion (the lost region's unreplicated events meeting the new primary's), are never taken for
one another. The replica keeps both, in arrival order, and its readers keep the one from the
region that held the seq (`replica.py`).
Per entity the order is its seq order (one writer region, one source stream); between
entities of different regions the replica's order is the order of arrival. The replica's own
sequence is the position its readers use (`replica.py`), as in the JetStream journal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nats.js import api
from nats.js.errors import NotFoundError

from ....streams.publisher import StreamSettings
from ....wire.nats import ensure_stream
from ....wire.protocol import events_filter, stream_name, stream_prefix
from .settings import RegionSettings

REPLICA_DUPLICATE_WINDOW = 0.1  # seconds: the least nats-server takes (0 means 2 minutes)


def replica_stream(settings: RegionSettings, region: str | None = None) -> str:
    """The replica stream of `region` (this one by default): `{PREFIX}_REGION_{NAME}`."""
    return f"{stream_prefix(settings.prefix)}_REGION_{(region or settings.name).upper()}"


def source_stream(settings: RegionSettings, region: str, entity_type: str) -> str:
    """Where `region`'s members publish `entity_type`'s events (the outbox's stream)."""
    return stream_name(settings.region_prefix(region), entity_type)


def replica_config(
    settings: RegionSettings, entity_types: Iterable[str], streams: StreamSettings | None = None
) -> api.StreamConfig:
    """The replica stream of this region: every region's streams of `entity_types`, renamed to the global prefix."""
    streams = streams or StreamSettings()
    sources = [
        api.StreamSource(
            name=source_stream(settings, region, entity_type),
            subject_transforms=[
                api.SubjectTransform(
                    src=events_filter(settings.region_prefix(region), entity_type),
                    dest=f"{settings.prefix}.events.{entity_type}." + "{{wildcard(1)}}",
                )
            ],
        )
        for region in settings.regions
        for entity_type in sorted(entity_types)
    ]
    return api.StreamConfig(
        name=replica_stream(settings),
        subjects=[],
        sources=sources,
        storage=api.StorageType(streams.storage),
        num_replicas=settings.replicas,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=REPLICA_DUPLICATE_WINDOW,
        placement=api.Placement(cluster=settings.name),
        allow_direct=True,  # readers get messages from any replica, no consumer (and no meta leader) needed
    )


async def ensure_sources(
    js: Any, settings: RegionSettings, entity_types: Iterable[str], streams: StreamSettings | None = None
) -> None:
    """Create every region's type streams that do not exist yet, each placed in its own region.

    A replica sourcing a stream that does not exist yet retries with a growing pause (minutes),
    so a region started before another would see the other's first events late: each stream
    is made here first, as its region's publisher would make it (which then finds it).
    """
    streams = streams or StreamSettings()
    for region in settings.regions:
        for entity_type in sorted(entity_types):
            name = source_stream(settings, region, entity_type)
            try:
                await js.stream_info(name)
            except NotFoundError:
                config = streams.config_for(name, [events_filter(settings.region_prefix(region), entity_type)])
                config.placement = api.Placement(cluster=region)
                await ensure_stream(js, config)


async def ensure_replica(
    js: Any, settings: RegionSettings, entity_types: Iterable[str], streams: StreamSettings | None = None
) -> str:
    """Create or update this region's replica stream (and the streams it sources); returns its name."""
    types = sorted(entity_types)
    await ensure_sources(js, settings, types, streams)
    config = replica_config(settings, types, streams)
    await ensure_stream(js, config)
    assert config.name is not None
    return config.name
