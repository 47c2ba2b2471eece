"""The rule that says which region writes an entity (its primary), and where it is recorded.

1. A claim in the KV bucket `{PREFIX}_REGION_PRIMARY` (placed in the home region, replicated
   there) names the entity's region: written by an entity's first command (unpinned types) or
   by a move (`moves.py`, any type).
2. Otherwise, a pinned type's region: `RegionSettings.pinned[type]`.
3. Otherwise (unpinned, never claimed) the region the entity's first command was sent in claims
   it, with a KV create (it fails if a claim exists, so two regions racing agree on one).

A claim written by a move or a promotion also says which region wrote which seqs (its epochs:
`eu@1,us@6` is "eu wrote 1-5, us writes from 6"; a first-write claim, `us`, is one epoch). Readers
of a replica keep an event only from the region that held its seq (`Primaries.wrote`): after a
promotion, the events the lost region wrote beyond what the new primary adopted (the RPO) are
still in that region's journal and stream, and reach every replica when it returns, but no read
or view applies them.

Each process follows the bucket (a KV watch): every claim of a pinned type's entity (a moved
one: few) and the claims it has read of others, so a move reaches every door and fence, and a
pinned type's commands never wait for the bucket. The cost: an unpinned entity not in the cache
needs the home region; while the home region cannot be reached, commands for such entities
answer `unavailable` (entities already looked up, and pinned types, are unaffected). A process
just started reads the moved entities while it starts serving (the watch's first pass).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
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

Epochs = tuple[tuple[str, int], ...]  # (region, the first seq it wrote), in seq order


def encode_claim(epochs: Epochs) -> bytes:
    """A claim's KV value: the region alone when it wrote every seq (a first write), else `eu@1,us@6`."""
    if len(epochs) == 1 and epochs[0][1] == 1:
        return epochs[0][0].encode()
    return ",".join(f"{region}@{start}" for region, start in epochs).encode()


def decode_claim(value: bytes) -> tuple[str, Epochs]:
    """(the region that writes the entity now, its epochs: () when the value names a region alone)."""
    text = value.decode()
    if "@" not in text:
        return text, ()
    epochs = tuple((region, int(start)) for region, start in (part.rsplit("@", 1) for part in text.split(",")))
    return epochs[-1][0], epochs


def handed_over(epochs: Epochs, region: str, start: int) -> Epochs:
    """`epochs` with `region` writing from `start` on: epochs that begin at or after it wrote nothing that stays."""
    kept = tuple((r, s) for r, s in epochs if s < start)
    if kept and kept[-1][0] == region:
        return kept
    return (*kept, (region, start))


def writer_at(epochs: Epochs, seq: int) -> str | None:
    """The region that held `seq` (None: before the first epoch, which a claim never leaves)."""
    found = None
    for region, start in epochs:
        if start > seq:
            break
        found = region
    return found


def key_entity(key: str) -> tuple[str, str]:
    """`claim_key`'s inverse: (type, id)."""
    entity_type, encoded = key.split(".", 1)
    if encoded == "_":
        return entity_type, ""
    return entity_type, base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def claims_bucket(settings: RegionSettings) -> str:
    return f"{stream_prefix(settings.prefix)}_REGION_PRIMARY"


def claim_key(entity_type: str, entity_id: str) -> str:
    """A KV key for any id: the type, then the id in unpadded URL-safe base64 (KV keys allow neither `%` nor spaces)."""
    return f"{entity_type}.{base64.urlsafe_b64encode(entity_id.encode()).decode().rstrip('=') or '_'}"


class Claim:
    """What the bucket says of one entity: its region and the entry's revision (0: no entry)."""

    __slots__ = ("epochs", "region", "revision")

    def __init__(self, region: str | None, revision: int, epochs: Epochs = ()) -> None:
        self.region, self.revision, self.epochs = region, revision, epochs


class Primaries:
    """`await primaries.start()`, then `await primaries.of(type, id)` -> the primary region's name."""

    def __init__(self, nc: NATS, settings: RegionSettings) -> None:
        self.nc = nc
        self.settings = settings
        self._kv: Any = None
        self._cache: dict[str, str] = {}  # claim key -> region
        self._released: set[str] = set()  # entities this region handed away: refused even before the claim moves
        self._moved: dict[str, str] = {}  # claims of pinned types' entities (moved off their pinned region)
        self._epochs: dict[str, Epochs] = {}  # every moved entity's epochs (which region wrote which seqs)
        self._revisions: dict[str, int] = {}  # the claims bucket's revision of each of those
        self.on_epochs: list[Callable[[str, str, Epochs, int], None]] = []  # told (type, id, epochs, revision)
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
                region, epochs = decode_claim(entry.value)
                self._learn(entry.key, epochs, entry.revision or 0)
                if region == self.settings.name:  # moved (back) here: another member of the region adopted it
                    self._released.discard(entry.key)
                if entry.key.split(".", 1)[0] in self.settings.pinned:
                    self._moved[entry.key] = region  # every one: the fence of a pinned type reads them
                if entry.key in self._cache:
                    self._cache[entry.key] = region
        finally:
            await watcher.stop()

    def _learn(self, key: str, epochs: Epochs, revision: int) -> None:
        if len(epochs) < 2:  # one region wrote it all: nothing to tell apart
            self._epochs.pop(key, None)
            self._revisions.pop(key, None)
            return
        if self._epochs.get(key) == epochs:
            return
        self._epochs[key], self._revisions[key] = epochs, revision
        entity_type, entity_id = key_entity(key)
        for tell in self.on_epochs:
            tell(entity_type, entity_id, epochs, revision)

    def moved_entities(self) -> list[tuple[str, str, Epochs, int]]:
        """Every moved entity this process has read: (type, id, epochs, the claim's revision)."""
        return [(*key_entity(key), epochs, self._revisions[key]) for key, epochs in self._epochs.items()]

    def moved(self) -> bool:
        """Whether any entity moved (a reader's check of provenance costs nothing otherwise)."""
        return bool(self._epochs)

    def wrote(self, entity_type: str, entity_id: str, seq: int, region: str) -> bool:
        """Whether `region` held the entity's `seq` (True when the entity never moved, as far as this
        process has read): a replica's reader keeps an event only from the region that held its seq."""
        if not self._epochs:
            return True
        epochs = self._epochs.get(claim_key(entity_type, entity_id))
        return not epochs or writer_at(epochs, seq) == region

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
        if not entry.value:
            return Claim(None, entry.revision or 0)
        region, epochs = decode_claim(entry.value)
        return Claim(region, entry.revision or 0, epochs)

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

    async def take(self, entity_type: str, entity_id: str, revision: int, *, previous: Epochs, start: int) -> None:
        """Claim the entity for this region from seq `start` on, if the bucket's entry is still at
        `revision` (0: none); `previous` are the epochs until then (the old claim's, or its region's from 1)."""
        key = claim_key(entity_type, entity_id)
        epochs = handed_over(previous, self.settings.name, start)
        value = encode_claim(epochs)
        if revision:
            stored = await self._bucket().update(key, value, last=revision)
        else:
            stored = await self._bucket().create(key, value)
        self._released.discard(key)
        self._learn(key, epochs, int(stored))
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
