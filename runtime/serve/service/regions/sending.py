"""A region member's `Sender`: its consumers, timers and workflow steps reach each entity's primary region.

The command runs here when this region writes the entity (the runtime's fence says so again in
the turn); otherwise it goes to the primary region's members on `{prefix}.r.{region}.cmd.…`, as
the region door sends a client's command, by the cluster's own `ask_over_nats`: the same command
id (the primary's dedupe makes a consumer's redelivery or a retry safe), the deadline passed on as
`Memoir-Timeout-Ms`, the current span's `traceparent` (the primary's spans continue the
consumer's trace), the primary's error code raised as the typed `CommandError`; an unreachable
region is `unavailable` after `remote_timeout` (a consumer retries it, then parks it as a dead letter).

Each region's consumers follow their own region's streams, so each event is reacted to once,
in the region that wrote it, whichever region its reaction's target lives in. A cross-region
command arrives as a client's would: where the primary checks bearer JWTs it is refused
(`unauthorized`); a trusted inside path between regions is not built yet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from ....engine.runtime import Runtime
from ....engine.sender import Sender
from ....model.access import Caller
from ....model.errors import Unavailable
from ....wire.protocol import Reply, command_subject
from ..sending import ask_over_nats
from .primary import Primaries
from .settings import RegionSettings


class RegionSender:
    """The `Sender` of a region member (`Service.sender`, and the runtime's workflow steps)."""

    def __init__(self, runtime: Runtime, settings: RegionSettings) -> None:
        self.runtime, self.settings = runtime, settings
        self.local: Sender = runtime  # what this region writes goes through it: a cluster member's routes
        self.nc: NATS | None = None
        self.primaries: Primaries | None = None
        self.sent: dict[str, int] = {}  # region -> commands sent there

    def over(self, local: Sender) -> RegionSender:
        """This sender, with `local` (a cluster member's sender, reaching the entity's owner) for the
        entities this region writes: what `Service.wrap_sender` is given."""
        self.local = local
        return self

    def attach(self, nc: NATS, primaries: Primaries) -> None:
        """Once the region's connection and primary rule exist (the service starts before them)."""
        self.nc, self.primaries = nc, primaries

    async def ask(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: bytes | Mapping[str, Any] | msgspec.Struct | None = None,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        deadline: float | None = None,
        caller: Caller | None = None,
    ) -> Reply:
        if self.nc is None or self.primaries is None:
            raise Unavailable("region starting", "its primary rule is not ready yet: retry")
        region = await self.primaries.of(entity_type, entity_id)
        if region == self.settings.name:
            return await self.local.ask(
                entity_type,
                entity_id,
                command,
                args,
                command_id=command_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
                deadline=deadline,
                caller=caller,
            )
        timeout = self.settings.remote_timeout
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        subject = command_subject(self.settings.region_prefix(region), entity_type, entity_id, command)
        try:
            reply = await ask_over_nats(
                self.nc,
                subject,
                args,
                timeout=timeout,
                command_id=command_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
                who=f"region {region}",
            )
        except NoRespondersError:
            raise Unavailable("region unreachable", f"no member of region {region} serves {subject}") from None
        self.sent[region] = self.sent.get(region, 0) + 1
        return reply
