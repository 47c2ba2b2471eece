"""The JetStream journal's key store: a KV bucket `{PREFIX}_ENTITY_KEYS` beside the event stream.

One key per entity (history 1), created on first use, so streams written before it
existed keep working. Forgetting first erases the stored message (JetStream's message
delete overwrites it in the file store unless told not to), then writes a tombstone
value so the entity cannot get a new key; replicas receive both through the stream.
nats-py creates KV streams with `deny_delete`, which forbids that erase, so the bucket's
stream is created here with the KV layout and message deletes allowed, then bound as KV.
"""

from __future__ import annotations

from typing import Any

from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from ..model.errors import JournalError, MemoirError
from ..wire.nats import ensure_stream
from ..wire.protocol import stream_prefix
from .jetstream import JetStreamJournal, _kv_key
from .keys import KeyEntry, KeyStore

_TOMBSTONE = b"-"  # stored material always starts with a scheme byte 0x00 or 0x01


def _entry(value: bytes | None) -> KeyEntry:
    return KeyEntry(None if not value or value == _TOMBSTONE else bytes(value))


class KvKeyStore(KeyStore):
    def __init__(self, journal: JetStreamJournal) -> None:
        self.journal = journal
        self.bucket = f"{stream_prefix(journal.prefix)}_ENTITY_KEYS"
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            config = api.StreamConfig(
                name=f"KV_{self.bucket}",
                subjects=[f"$KV.{self.bucket}.>"],
                storage=api.StorageType.FILE,
                num_replicas=self.journal.replicas,
                max_msgs_per_subject=1,
                discard=api.DiscardPolicy.NEW,
                allow_rollup_hdrs=True,
                allow_direct=True,
                deny_delete=False,  # forgetting erases the key's message
                max_consumers=-1,
                max_msgs=-1,
            )
            with self.journal._online("opening the entity key bucket"):
                try:
                    await ensure_stream(self.journal.js, config)
                except MemoirError as exc:
                    raise JournalError(str(exc)) from exc
                self._kv = await self.journal.js.key_value(self.bucket)
        return self._kv

    async def _get(self, kv: Any, key: str) -> Any:
        try:
            return await kv.get(key)
        except KeyNotFoundError:
            return None

    async def get(self, entity_type: str, entity_id: str) -> KeyEntry | None:
        kv = await self._bucket()
        with self.journal._online(f"reading the key of {entity_type}/{entity_id}"):
            found = await self._get(kv, _key(entity_type, entity_id))
        return None if found is None else _entry(found.value)

    async def create(self, entity_type: str, entity_id: str, material: bytes) -> KeyEntry:
        kv = await self._bucket()
        key = _key(entity_type, entity_id)
        with self.journal._online(f"creating the key of {entity_type}/{entity_id}"):
            try:
                await kv.create(key, material)
                return KeyEntry(material)
            except KeyWrongLastSequenceError:
                found = await self._get(kv, key)  # someone else's write won: use theirs
        return _entry(None if found is None else found.value)

    async def forget(self, entity_type: str, entity_id: str) -> bool:
        kv = await self._bucket()
        key = _key(entity_type, entity_id)
        with self.journal._online(f"destroying the key of {entity_type}/{entity_id}"):
            found = await self._get(kv, key)
            had = found is not None and not _entry(found.value).forgotten
            if found is not None:
                await self.journal.js.delete_msg(f"KV_{self.bucket}", found.revision)  # erased, not unlinked
            await kv.put(key, _TOMBSTONE)
        return had


def _key(entity_type: str, entity_id: str) -> str:
    return _kv_key((entity_type, entity_id))
