"""The rule that says which region writes an entity (its primary), and where it is recorded.

1. Pinned: `RegionSettings.pinned[type]` names the region for every entity of the type.
2. Otherwise the first write: the region a command for an entity with no primary yet was sent
   in becomes its primary, claimed with a KV create (it fails if a claim exists, so two regions
   racing for a new entity agree on one) in the bucket `{PREFIX}_REGION_PRIMARY`, placed in the
   home region and replicated there.

A claim never changes here (moving a primary is not built yet), so each process caches the
answers it read. The cost of the rule: an unpinned entity not in the cache needs the home
region; while the home region cannot be reached, commands for such entities answer
`unavailable` (pinned types, and entities already looked up, are unaffected).
"""

from __future__ import annotations

import base64
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from ....model.errors import Unavailable
from ....wire.protocol import stream_prefix
from .settings import RegionSettings

CACHE = 100_000  # entities whose primary a process remembers


def claims_bucket(settings: RegionSettings) -> str:
    return f"{stream_prefix(settings.prefix)}_REGION_PRIMARY"


def claim_key(entity_type: str, entity_id: str) -> str:
    """A KV key for any id: the type, then the id in unpadded URL-safe base64 (KV keys allow neither `%` nor spaces)."""
    return f"{entity_type}.{base64.urlsafe_b64encode(entity_id.encode()).decode().rstrip('=') or '_'}"


class Primaries:
    """`await primaries.start()`, then `await primaries.of(type, id)` -> the primary region's name."""

    def __init__(self, nc: NATS, settings: RegionSettings, *, timeout: float = 2.0) -> None:
        self.nc = nc
        self.settings = settings
        self.timeout = timeout
        self._kv: Any = None
        self._cache: dict[tuple[str, str], str] = {}
        self.claimed = 0  # entities this process claimed for its region

    async def start(self) -> None:
        """Create (or bind) the claims bucket in the home region; needs every region's types pinned or the home."""
        js = self.nc.jetstream(timeout=10.0)
        config = api.KeyValueConfig(
            bucket=claims_bucket(self.settings),
            history=1,
            replicas=self.settings.replicas,
            placement=api.Placement(cluster=self.settings.home_region),
            direct=True,
        )
        self._kv = await js.create_key_value(config)

    async def of(self, entity_type: str, entity_id: str) -> str:
        pinned = self.settings.pinned.get(entity_type)
        if pinned is not None:
            return pinned
        found = self._cache.get((entity_type, entity_id))
        if found is not None:
            return found
        region = await self._claim(entity_type, entity_id)
        if len(self._cache) >= CACHE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[(entity_type, entity_id)] = region
        return region

    def admits(self, entity_type: str, entity_id: str) -> bool:
        """The fence inside each turn (the runtime's `admits`): False for an entity known to be written elsewhere.

        Known: its type is pinned to another region, or this process read another region's claim
        for it. An entity whose claim this process has not read is admitted: a command reaches a
        member through a door that looked the claim up, and only a client sending to a region's
        own prefix directly could bypass that (for pinned types the fence is complete).
        """
        pinned = self.settings.pinned.get(entity_type)
        if pinned is not None:
            return pinned == self.settings.name
        return self._cache.get((entity_type, entity_id), self.settings.name) == self.settings.name

    async def _claim(self, entity_type: str, entity_id: str) -> str:
        if self._kv is None:
            raise Unavailable("no primary rule", "Primaries.start() was not awaited")
        key = claim_key(entity_type, entity_id)
        try:
            try:
                entry = await self._kv.get(key)
                return str(entry.value.decode())
            except KeyNotFoundError:
                pass
            try:
                await self._kv.create(key, self.settings.name.encode())
                self.claimed += 1
                return self.settings.name
            except KeyWrongLastSequenceError:  # another region claimed it first
                entry = await self._kv.get(key)
                return str(entry.value.decode())
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise Unavailable(
                "primary unknown",
                f"{entity_type}/{entity_id}: the home region {self.settings.home_region} holding first-write "
                f"claims cannot be reached ({type(exc).__name__})",
            ) from None
