"""The shard allocation: one KV entry per shard naming its owner, written only when it moves.

An entry (`shard.NNNNN` in the leases bucket) holds the owning member and an epoch, a fencing
token that grows by one on every write. Every write is a compare-and-set on the entry's KV
revision (`create` for a shard never allocated), so two members racing for a shard cannot
both win: the server orders them and refuses the second. The entry alone does not let its
member serve: the member's own lease (leases.py, `member.<id>`) must also be within its
deadline. placement.py says when a member may write an entry; this module only keeps the
table current from the bucket's watch and performs the writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from .changes import Changes
from .shards import shard_from_key, shard_key
from .store import Entry, is_deleted
from .store import revision as entry_revision

FREE = ""  # an entry's owner when a leaving member had nobody to hand the shard to


class Allocation(msgspec.Struct, frozen=True):
    """What a shard's entry holds. `at` (wall clock) and `by` are for people: nobody decides by them."""

    owner: str
    epoch: int
    by: str = ""
    at: float = 0.0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Allocation).decode


def decode(data: bytes | None) -> Allocation | None:
    try:
        return _decode(data or b"")
    except msgspec.DecodeError:
        return None


@dataclass(frozen=True)
class Slot:
    """A shard's entry as last seen: its owner and epoch at a KV revision."""

    owner: str
    epoch: int
    revision: int


class AllocationTable:
    """The allocation as this process sees it (fed by the leases bucket's watch), and its writes."""

    def __init__(self, kv: KeyValue, shards: int, *, changes: Changes | None = None) -> None:
        self.kv = kv
        self.shards = shards
        self.slots: dict[int, Slot] = {}
        self.changes = Changes(changes)  # fired on owner changes
        self.writes = 0

    def on_entry(self, entry: Entry) -> None:
        shard = shard_from_key(entry.key)
        if shard is None:
            return
        value = None if is_deleted(entry) else decode(entry.value)
        self.observe(shard, entry_revision(entry), value)

    def observe(self, shard: int, revision: int, value: Allocation | None) -> None:
        old = self.slots.get(shard)
        if old is not None and old.revision >= revision:
            return
        slot = Slot(value.owner if value is not None else FREE, value.epoch if value is not None else 0, revision)
        self.slots[shard] = slot
        if old is None or old.owner != slot.owner:
            self.changes.fire()

    def owner(self, shard: int) -> str | None:
        slot = self.slots.get(shard)
        return slot.owner or None if slot is not None else None

    async def wait_changed(self, timeout: float) -> None:
        """Until a shard changes owner, or `timeout`."""
        await self.changes.wait(timeout)

    async def write(self, shard: int, owner: str, *, by: str, last: Slot | None) -> Slot | None:
        """Name `owner` for `shard` with the epoch bumped, if its entry is still `last` (None: never
        written). None: someone wrote it since (the table is refreshed). Transient NATS errors raise."""
        epoch = (last.epoch if last is not None else 0) + 1
        data = _encode(Allocation(owner, epoch, by, time.time()))
        key = shard_key(shard)
        try:
            if last is None:
                revision = await self.kv.create(key, data)
            else:
                revision = await self.kv.update(key, data, last=last.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            await self.refresh(shard)
            return None
        self.writes += 1
        self.observe(shard, revision, Allocation(owner, epoch, by))
        return self.slots[shard]

    async def refresh(self, shard: int) -> None:
        try:
            entry = await self.kv.get(shard_key(shard))
        except nats.js.errors.KeyNotFoundError as exc:
            if exc.entry is not None:
                self.on_entry(exc.entry)
            return
        self.on_entry(entry)
