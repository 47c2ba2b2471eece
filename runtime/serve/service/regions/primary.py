"""The rule that says which region writes an entity (its primary), and where it is recorded.

1. A claim in the KV bucket `{PREFIX}_REGION_PRIMARY` (placed in the home region, replicated
   there) names the entity's region: written by an entity's first command (unpinned types) or
   by a move (`moves.py`, any type).
2. Otherwise, a pinned type's region: `RegionSettings.pinned[type]`.
3. Otherwise (unpinned, never claimed) the region the entity's first command was sent in claims
   it, with a KV create (it fails if a claim exists, so two regions racing agree on one).

Each process follows the bucket (a KV watch): every claim of a pinned type's entity (a moved
one: few) and the claims it has read of others, so a move reaches every door and fence, and a
pinned type's commands never wait for the bucket. The cost: an unpinned entity not in the cache
needs the home region; while the home region cannot be reached, commands for such entities
answer `unavailable` (entities already looked up, and pinned types, are unaffected). A process
just started reads the moved entities while it starts serving (the watch's first pass).
"""

from __future__ import annotations

import base64
from typing import Any

import anyio
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ....model.errors import Unavailable
from ....wire.nats import ensure_stream
from ....wire.protocol import stream_prefix
from .settings import RegionSettings

log = structlog.get_logger("memoir.region.primary")

CACHE = 100_000  # entities whose primary a process remembers


def claims_bucket(settings: RegionSettings) -> str:
    return f"{stream_prefix(settings.prefix)}_REGION_PRIMARY"


def claim_key(entity_type: str, entity_id: str) -> str:
    """A KV key for any id: the type, then the id in unpadded URL-safe base64 (KV keys allow neither `%` nor spaces)."""
    return f"{entity_type}.{base64.urlsafe_b64encode(entity_id.encode()).decode().rstrip('=') or '_'}"


class Claim:
    """What the bucket says of one entity: its region and the entry's revision (0: no entry)."""

    __slots__ = ("region", "revision")

    def __init__(self, region: str | None, revision: int) -> None:
        self.region, self.revision = region, revision


class Primaries:
    """`await primaries.start()`, then `await primaries.of(type, id)` -> the primary region's name."""

    def __init__(self, nc: NATS, settings: RegionSettings) -> None:
        self.nc = nc
        self.settings = settings
        self._kv: Any = None
        self._cache: dict[str, str] = {}  # claim key -> region
        self._released: set[str] = set()  # entities this region handed away: refused even before the claim moves
        self._moved: dict[str, str] = {}  # claims of pinned types' entities (moved off their pinned region)
        self.claimed = 0  # entities this process claimed for its region
        self.followed = anyio.Event()  # set once `follow` has read every claim there was when it began

    async def start(self) -> None:
        """Create (or bring to this configuration) the claims bucket in the home region, then bind it.

        The bucket's stream is made here rather than by nats-py's `create_key_value`, which leaves
        a `placement` out: the bucket would land in the cluster of whichever member made it first."""
        bucket = claims_bucket(self.settings)
        config = api.StreamConfig(
            name=f"KV_{bucket}",
            subjects=[f"$KV.{bucket}.>"],
            allow_direct=True,
            allow_rollup_hdrs=True,
            deny_delete=True,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=120.0,
            max_consumers=-1,
            max_msgs=-1,
            max_msgs_per_subject=1,
            num_replicas=self.settings.replicas,
            placement=api.Placement(cluster=self.settings.home_region),
        )
        await ensure_stream(self.nc.jetstream(timeout=10.0), config)
        self.bind()

    def bind(self) -> None:
        """Use the claims bucket the regions' members made (a client that moves entities).

        No look-up of the bucket's stream: that needs the supercluster's meta leader, which a cut
        between the regions takes away; reads (direct gets) and writes go to the bucket's own
        replicas in the home region."""
        bucket = claims_bucket(self.settings)
        js = self.nc.jetstream(timeout=self.settings.remote_timeout)
        self._kv = KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=js, direct=True)

    async def follow(self) -> None:
        """Keep the cached claims current (a move changes one) until cancelled."""
        watcher = await self._bucket().watchall()
        try:
            async for entry in watcher:
                if entry is None or not entry.delta:  # None: the first pass is over (or there was none)
                    self.followed.set()
                if entry is None or entry.value is None:
                    continue
                region = entry.value.decode()
                if entry.key.split(".", 1)[0] in self.settings.pinned:
                    self._moved[entry.key] = region  # every one: the fence of a pinned type reads them
                if entry.key in self._cache:
                    self._cache[entry.key] = region
        finally:
            await watcher.stop()

    def _bucket(self) -> Any:
        if self._kv is None:
            raise Unavailable("no primary rule", "Primaries.start() was not awaited")
        return self._kv

    def _remember(self, key: str, region: str) -> str:
        if key not in self._cache and len(self._cache) >= CACHE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = region
        return region

    async def of(self, entity_type: str, entity_id: str) -> str:
        key = claim_key(entity_type, entity_id)
        pinned = self.settings.pinned.get(entity_type)
        if pinned is not None:  # no look-up on the way: the moved ones are all followed (`follow`)
            return self._moved.get(key, pinned)
        found = self._cache.get(key)
        if found is not None:
            return found
        claim = await self.claim(entity_type, entity_id)
        if claim.region is not None:
            return self._remember(key, claim.region)
        return self._remember(key, await self._create(entity_type, entity_id))

    async def claim(self, entity_type: str, entity_id: str) -> Claim:
        """The bucket's entry for the entity, read now."""
        try:
            entry = await self._bucket().get(claim_key(entity_type, entity_id))
        except KeyNotFoundError:
            return Claim(None, 0)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise self._unreachable(entity_type, entity_id, exc) from None
        return Claim(entry.value.decode() if entry.value else None, entry.revision or 0)

    async def _create(self, entity_type: str, entity_id: str) -> str:
        key = claim_key(entity_type, entity_id)
        try:
            await self._bucket().create(key, self.settings.name.encode())
            self.claimed += 1
            return self.settings.name
        except KeyWrongLastSequenceError:  # another region claimed it first
            claim = await self.claim(entity_type, entity_id)
            assert claim.region is not None
            return claim.region
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise self._unreachable(entity_type, entity_id, exc) from None

    async def take(self, entity_type: str, entity_id: str, revision: int) -> None:
        """Claim the entity for this region if the bucket's entry is still at `revision` (0: none)."""
        key = claim_key(entity_type, entity_id)
        value = self.settings.name.encode()
        if revision:
            await self._bucket().update(key, value, last=revision)
        else:
            await self._bucket().create(key, value)
        self._released.discard(key)
        if entity_type in self.settings.pinned:
            self._moved[key] = self.settings.name
        self._remember(key, self.settings.name)

    def release(self, entity_type: str, entity_id: str) -> None:
        """This region stops writing the entity now (a move away): the fence refuses it from here on."""
        self._released.add(claim_key(entity_type, entity_id))

    def admits(self, entity_type: str, entity_id: str) -> bool:
        """The fence inside each turn (the runtime's `admits`): False for an entity known to be written elsewhere.

        Known: released here by a move, claimed by another region as far as this process has
        read, or of a type pinned elsewhere and not claimed here. An unpinned entity whose claim
        this process has not read is admitted: commands reach a member through a door that
        looked the claim up; only a client sending to a region's own prefix could bypass that.
        """
        key = claim_key(entity_type, entity_id)
        if key in self._released:
            return False
        pinned = self.settings.pinned.get(entity_type)
        if pinned is not None:
            return self._moved.get(key, pinned) == self.settings.name
        cached = self._cache.get(key)
        return cached is None or cached == self.settings.name

    def _unreachable(self, entity_type: str, entity_id: str, exc: BaseException) -> Unavailable:
        return Unavailable(
            "primary unknown",
            f"{entity_type}/{entity_id}: the home region {self.settings.home_region} holding the claims "
            f"cannot be reached ({type(exc).__name__})",
        )
