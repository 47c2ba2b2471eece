"""The key store: the data keys of encrypted entities, kept beside the journal.

One entry per (entity type, entity id) of an `encrypted=True` type, created with the
entity's first event. An entry holds the stored key material (the data key, wrapped by
the master key when one is configured; the engine's `KeyRing` does the wrapping), or
nothing once the entity is forgotten: the entry stays as a tombstone, so a forgotten
entity cannot quietly get a new key and a second life. Each journal keeps its keys in
its own storage (a dict, a table, a JetStream KV bucket) so a backup of one is a backup
of the other, and no second system has to be running.
"""

from __future__ import annotations

import abc

import msgspec


class KeyEntry(msgspec.Struct, frozen=True):
    """A stored key: its material, or None once the entity was forgotten."""

    material: bytes | None

    @property
    def forgotten(self) -> bool:
        return self.material is None


class KeyStore(abc.ABC):
    """Where one journal keeps its data keys. Every method is safe to call concurrently."""

    @abc.abstractmethod
    async def get(self, entity_type: str, entity_id: str) -> KeyEntry | None:
        """The entity's entry, or None if it never had a key."""

    @abc.abstractmethod
    async def create(self, entity_type: str, entity_id: str, material: bytes) -> KeyEntry:
        """Store `material` unless the entity has an entry already; returns the entry that is stored.

        Two writers racing for a new entity both get the one key that won; a forgotten
        entity gets its tombstone back, never a new key.
        """

    @abc.abstractmethod
    async def forget(self, entity_type: str, entity_id: str) -> bool:
        """Destroy the entity's key, leaving a tombstone; False if there was no live key to destroy.

        The material is erased, not just unlinked, as far as the storage allows (see each backend).
        """


class MemoryKeyStore(KeyStore):
    """The `memory://` journal's keys: a dict, lost with it."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], KeyEntry] = {}

    async def get(self, entity_type: str, entity_id: str) -> KeyEntry | None:
        return self._entries.get((entity_type, entity_id))

    async def create(self, entity_type: str, entity_id: str, material: bytes) -> KeyEntry:
        return self._entries.setdefault((entity_type, entity_id), KeyEntry(material))

    async def forget(self, entity_type: str, entity_id: str) -> bool:
        old = self._entries.get((entity_type, entity_id))
        self._entries[(entity_type, entity_id)] = KeyEntry(None)
        return old is not None and not old.forgotten
