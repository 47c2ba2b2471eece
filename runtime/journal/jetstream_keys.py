"""The JetStream journal's key store: a KV bucket `{PREFIX}_ENTITY_KEYS` beside the event stream.

One key per entity (history 1), created on first use, so streams written before it
existed keep working. Forgetting first erases the stored message (JetStream's message
delete overwrites it in the file store unless told not to), then writes a tombstone
value so the entity cannot get a new key; replicas receive both through the stream.
nats-py creates KV streams with `deny_delete`, which forbids that erase, so the bucket's
stream is created here with the KV layout and message deletes allowed, then bound as KV.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from ..model.errors import JournalError, MemoirError
from ..wire.nats import ensure_stream
from ..wire.protocol import stream_prefix
from .keys import KeyEntry, KeyStore

_TOMBSTONE = b"-"  # stored material always starts with a scheme byte 0x00 or 0x01


def _entry(value: bytes | None) -> KeyEntry:
    return KeyEntry(None if not value or value == _TOMBSTONE else bytes(value))


def kv_key(key: tuple[str, str]) -> str:
    """KV keys allow only [-/_=.a-zA-Z0-9]: the entity key in unpadded base64url (the journal's meta bucket too)."""
    return base64.urlsafe_b64encode(f"{key[0]}/{key[1]}".encode()).decode().rstrip("=")


Online = Callable[[str], AbstractContextManager[None]]
"""The journal's guard around one call: fails fast while disconnected, says what was being done."""


class KvKeyStore(KeyStore):
    """Given what it needs from its journal, not the journal: its JetStream context (a getter:
    the journal connects after building it), its prefix and replicas, and its `online` guard."""

    def __init__(self, *, prefix: str, replicas: int, js: Callable[[], Any], online: Online) -> None:
        self.bucket = f"{stream_prefix(prefix)}_ENTITY_KEYS"
        self.replicas = replicas
        self._js = js
        self._online = online
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            config = api.StreamConfig(
                name=f"KV_{self.bucket}",
                subjects=[f"$KV.{self.bucket}.>"],
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                max_msgs_per_subject=1,
                discard=api.DiscardPolicy.NEW,
                allow_rollup_hdrs=True,
                allow_direct=True,
                deny_delete=False,  # forgetting erases the key's message
                max_consumers=-1,
                max_msgs=-1,
            )
            with self._online("opening the entity key bucket"):
                try:
                    await ensure_stream(self._js(), config)
                except MemoirError as exc:
                    raise JournalError(str(exc)) from exc
                self._kv = await self._js().key_value(self.bucket)
        return self._kv

    async def _get(self, kv: Any, key: str) -> Any:
        try:
            return await kv.get(key)
        except KeyNotFoundError:
            return None

    async def get(self, entity_type: str, entity_id: str) -> KeyEntry | None:
        kv = await self._bucket()
        with self._online(f"reading the key of {entity_type}/{entity_id}"):
            found = await self._get(kv, _key(entity_type, entity_id))
        return None if found is None else _entry(found.value)

    async def create(self, entity_type: str, entity_id: str, material: bytes) -> KeyEntry:
        kv = await self._bucket()
        key = _key(entity_type, entity_id)
        with self._online(f"creating the key of {entity_type}/{entity_id}"):
            try:
                await kv.create(key, material)
                return KeyEntry(material)
            except KeyWrongLastSequenceError:
                found = await self._get(kv, key)  # someone else's write won: use theirs
        return _entry(None if found is None else found.value)

    async def forget(self, entity_type: str, entity_id: str) -> bool:
        kv = await self._bucket()
        key = _key(entity_type, entity_id)
        with self._online(f"destroying the key of {entity_type}/{entity_id}"):
            found = await self._get(kv, key)
            had = found is not None and not _entry(found.value).forgotten
            if found is not None:
                await self._js().delete_msg(f"KV_{self.bucket}", found.revision)  # erased, not unlinked
            await kv.put(key, _TOMBSTONE)
        return had


def _key(entity_type: str, entity_id: str) -> str:
    return kv_key((entity_type, entity_id))
