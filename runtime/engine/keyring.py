"""The key ring: data keys of encrypted entities, on top of a journal's key store.

It creates an entity's data key with its first event, wraps it with the master key
when one is configured (so the key store alone, or its backup, opens nothing), keeps
a bounded cache of unwrapped keys, and destroys a key on `forget`. It also seals and
opens envelopes and snapshots: the one place that knows which bytes are bound to
which associated data.

The master key (key-encryption key) is 32 bytes in base64, from the file named by
`MEMOIR_MASTER_KEY_FILE` (a mounted secret), from `MEMOIR_MASTER_KEY`, or passed in;
never a flag, which other users could read in the process list. Keys stored without
one stay readable after one is configured; keys wrapped with one cannot be opened
without it (a clear error says so).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict

import msgspec

from ..journal.keys import KeyStore
from ..model.envelope import Envelope, Snapshot
from ..model.errors import ConfigError, EntityForgotten, SealError
from ..model.sealing import (
    KEY_BYTES,
    SealKey,
    cipher,
    event_aad,
    is_sealed,
    is_sealed_text,
    key_aad,
    new_key,
    reply_aad,
    seal,
    seal_text,
    snapshot_aad,
    unseal,
    unseal_text,
)

MASTER_KEY_ENV = "MEMOIR_MASTER_KEY"
MASTER_KEY_FILE_ENV = "MEMOIR_MASTER_KEY_FILE"
_RAW = b"\x00"  # stored material: the data key itself
_WRAPPED = b"\x01"  # stored material: the data key sealed with the master key

Key = tuple[str, str]


def parse_master_key(text: str, where: str = MASTER_KEY_ENV) -> bytes:
    """A master key from its base64 text; a clear ConfigError naming `where` otherwise (never the value)."""
    s = text.strip().replace("-", "+").replace("_", "/")  # standard or URL-safe alphabet
    try:
        key = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where} is not base64 (want 32 random bytes, e.g. `openssl rand -base64 32`)") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where} decodes to {len(key)} bytes; an AES-256 master key is {KEY_BYTES}")
    return key


def master_key_from_env() -> bytes | None:
    """The configured master key, or None: data keys are then stored unwrapped."""
    path = os.environ.get(MASTER_KEY_FILE_ENV, "").strip()
    if path:
        try:
            with open(path, encoding="ascii") as f:
                return parse_master_key(f.read(), f"{MASTER_KEY_FILE_ENV} ({path})")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{MASTER_KEY_FILE_ENV}: cannot read {path}: {exc}") from None
    text = os.environ.get(MASTER_KEY_ENV, "")
    return parse_master_key(text) if text.strip() else None


class KeyRing:
    """Data keys per entity: create, cache, destroy; seal and open what they protect."""

    def __init__(self, store: KeyStore, master_key: bytes | None = None, *, cache_size: int = 10_000) -> None:
        if master_key is not None and len(master_key) != KEY_BYTES:
            raise ConfigError(f"the master key must be {KEY_BYTES} bytes, got {len(master_key)}")
        self.store = store
        self._master = None if master_key is None else cipher(master_key)
        # unwrapped keys as ready AES-GCM objects (sealing with one skips a key schedule); None: forgotten
        self._cache: OrderedDict[Key, SealKey | None] = OrderedDict()
        self._cache_size = cache_size

    # -- keys ---------------------------------------------------------------------------------------

    async def existing(self, entity_type: str, entity_id: str) -> SealKey | None:
        """The entity's data key, None if it has none yet; raises EntityForgotten if it was destroyed."""
        key = (entity_type, entity_id)
        if key in self._cache:
            self._cache.move_to_end(key)
            found = self._cache[key]
        else:
            entry = await self.store.get(entity_type, entity_id)
            if entry is None:
                return None
            found = None if entry.material is None else self._unwrap(key, entry.material)
            self._remember(key, found)
        if found is None:
            raise EntityForgotten(entity_type, entity_id)
        return found

    async def for_write(self, entity_type: str, entity_id: str) -> SealKey:
        """The entity's data key, created now if it has none; raises EntityForgotten."""
        found = await self.existing(entity_type, entity_id)
        if found is not None:
            return found
        key = (entity_type, entity_id)
        entry = await self.store.create(entity_type, entity_id, self._wrap(key, new_key()))
        if entry.material is None:
            self._remember(key, None)
            raise EntityForgotten(entity_type, entity_id)
        data_key = self._unwrap(key, entry.material)
        self._remember(key, data_key)
        return data_key

    async def for_read(self, entity_type: str, entity_id: str) -> SealKey | None:
        """The data key, or None when there is none to read with (forgotten, or never created)."""
        try:
            return await self.existing(entity_type, entity_id)
        except EntityForgotten:
            return None

    async def forget(self, entity_type: str, entity_id: str) -> bool:
        """Destroy the entity's key in the store and in this cache; False if it had no live key."""
        self._cache.pop((entity_type, entity_id), None)
        had = await self.store.forget(entity_type, entity_id)
        self._remember((entity_type, entity_id), None)
        return had

    def evict(self, entity_type: str, entity_id: str) -> None:
        """Drop a cached key (another process forgot the entity): the next use asks the store."""
        self._cache.pop((entity_type, entity_id), None)

    def _remember(self, key: Key, value: SealKey | None) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _wrap(self, key: Key, data_key: bytes) -> bytes:
        if self._master is None:
            return _RAW + data_key
        return _WRAPPED + seal(self._master, data_key, key_aad(*key))

    def _unwrap(self, key: Key, material: bytes) -> SealKey:
        what = f"the data key of {key[0]}/{key[1]}"
        if material[:1] == _RAW and len(material) == 1 + KEY_BYTES:
            return cipher(material[1:])
        if material[:1] == _WRAPPED:
            if self._master is None:
                raise SealError(f"{what} is wrapped by a master key: set {MASTER_KEY_ENV}")
            return cipher(unseal(self._master, material[1:], key_aad(*key), f"{what} (wrong {MASTER_KEY_ENV}?)"))
        raise SealError(f"{what}: stored material is not a key ({len(material)} bytes)")

    # -- sealing ------------------------------------------------------------------------------------

    async def open(self, env: Envelope) -> Envelope | None:
        """A readable envelope: as is if not sealed, opened if its key exists, None if it was forgotten."""
        if not is_sealed(env.payload):
            return env
        key = await self.for_read(env.entity_type, env.entity_id)
        return None if key is None else open_envelope(key, env)


def seal_envelope(key: SealKey, env: Envelope) -> Envelope:
    """The envelope with its payload (and stored reply) sealed under the entity's data key."""
    where = (env.entity_type, env.entity_id, env.seq)
    return msgspec.structs.replace(
        env,
        payload=seal(key, env.payload, event_aad(*where, env.name, env.version)),
        reply=None if env.reply is None else seal_text(key, env.reply, reply_aad(*where)),
    )


def open_envelope(key: SealKey | None, env: Envelope) -> Envelope:
    """The envelope with readable payload and reply; SealError names the event if one does not open."""
    what = f"event {env.entity_type}/{env.entity_id}/{env.seq} ({env.name})"
    where = (env.entity_type, env.entity_id, env.seq)
    payload = env.payload
    if key is None:
        if is_sealed(payload) or is_sealed_text(env.reply):
            raise SealError(f"{what} is sealed and its entity has no data key")
        return env
    if is_sealed(payload):
        payload = unseal(key, payload, event_aad(*where, env.name, env.version), what)
    reply = env.reply
    if reply is not None and is_sealed_text(reply):
        reply = unseal_text(key, reply, reply_aad(*where), f"the stored reply of {what}")
    return msgspec.structs.replace(env, payload=payload, reply=reply)


def open_reply(key: SealKey | None, entity_type: str, entity_id: str, seq: int, data: bytes | None) -> bytes | None:
    """A stored reply (from the journal's command table) made readable."""
    if data is None or key is None or not is_sealed_text(data):
        return data
    what = f"the stored reply of {entity_type}/{entity_id}/{seq}"
    return unseal_text(key, data, reply_aad(entity_type, entity_id, seq), what)


def seal_snapshot(key: SealKey, snap: Snapshot) -> Snapshot:
    aad = snapshot_aad(snap.entity_type, snap.entity_id, snap.seq)
    return msgspec.structs.replace(snap, payload=seal(key, snap.payload, aad))


def open_snapshot(key: SealKey | None, snap: Snapshot) -> Snapshot:
    if not is_sealed(snap.payload):
        return snap
    what = f"snapshot {snap.entity_type}/{snap.entity_id}@{snap.seq}"
    if key is None:
        raise SealError(f"{what} is sealed and its entity has no data key")
    aad = snapshot_aad(snap.entity_type, snap.entity_id, snap.seq)
    return msgspec.structs.replace(snap, payload=unseal(key, snap.payload, aad, what))
