"""`memory://`: a journal in a Python dict, for tests and the testkit. Lost on exit.

Command ids are remembered for the life of the object (until the entity is deleted):
a repeat raises `DuplicateCommand`, checked before the seq, as in the SQL journals.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence

import msgspec

from ..model.envelope import Envelope, Snapshot
from ..model.errors import Conflict, DuplicateCommand, EntityDeleted
from .base import Journal, Page, check_batch
from .keys import KeyStore, MemoryKeyStore

Key = tuple[str, str]


class MemoryJournal(Journal):
    """The journal in a dict, for tests and the testkit: fast, and lost on exit."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._log: list[Envelope] = []  # position order; deleted events are removed
        self._positions: list[int] = []  # parallel to _log, for bisect
        self._entities: dict[Key, list[Envelope]] = {}
        self._heads: dict[Key, int] = {}
        self._deleted: set[Key] = set()
        self._snapshots: dict[Key, dict[int, Snapshot]] = {}
        self._checkpoints: dict[str, int] = {}
        self._commands: dict[Key, dict[str, tuple[int, bytes | None]]] = {}
        self._position = 0

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        key = check_batch(events, expected_seq)
        last = events[-1]
        if last.command_id is not None and (hit := self._commands.get(key, {}).get(last.command_id)) is not None:
            raise DuplicateCommand(key[0], key[1], last.command_id, hit[0], hit[1])
        if key in self._deleted:
            raise EntityDeleted(*key)
        head = self._heads.get(key, 0)
        if head != expected_seq:
            raise Conflict(key[0], key[1], expected_seq, head)
        stored = []
        for env in events:
            self._position += 1
            stored.append(msgspec.structs.replace(env, position=self._position))
        self._log.extend(stored)
        self._positions.extend(e.position for e in stored)
        self._entities.setdefault(key, []).extend(stored)
        self._heads[key] = stored[-1].seq
        if last.command_id is not None:
            self._commands.setdefault(key, {})[last.command_id] = (last.seq, last.reply)
        self._notify_appended()
        return stored

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        out = [
            e
            for e in self._entities.get((entity_type, entity_id), ())
            if e.seq >= from_seq and (to_seq is None or e.seq <= to_seq)
        ]
        return out if limit is None else out[:limit]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        i = bisect.bisect_left(self._positions, from_position)
        return self._log[i : i + limit]

    async def read_types(self, types: Collection[str], from_position: int = 1, limit: int = 1000) -> Page:
        out: list[Envelope] = []
        for env in self._log[bisect.bisect_left(self._positions, from_position) :]:
            if env.entity_type in types:
                out.append(env)
                if len(out) >= limit:
                    return Page(out, env.position)
        return Page(out, max(from_position - 1, self._position))

    async def head(self, entity_type: str, entity_id: str) -> int:
        return self._heads.get((entity_type, entity_id), 0)

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return (entity_type, entity_id) in self._deleted

    async def last_position(self) -> int:
        return self._position

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        key = (entity_type, entity_id)
        gone = {e.position for e in self._entities.get(key, ()) if to_seq is None or e.seq <= to_seq}
        self._entities[key] = [e for e in self._entities.get(key, ()) if e.position not in gone]
        keep = [i for i, e in enumerate(self._log) if e.position not in gone]
        self._log = [self._log[i] for i in keep]
        self._positions = [self._positions[i] for i in keep]
        if to_seq is None:
            self._deleted.add(key)
            self._snapshots.pop(key, None)
            self._commands.pop(key, None)

    async def restore_events(self, events: Sequence[Envelope]) -> int:
        """Put one entity's events back at their own seqs and positions (`memoir archive restore`)."""
        for env in events:
            key = (env.entity_type, env.entity_id)
            held = self._entities.setdefault(key, [])
            if any(e.seq == env.seq for e in held) or env.position in self._positions:
                continue
            held.insert(bisect.bisect_left([e.seq for e in held], env.seq), env)
            i = bisect.bisect_left(self._positions, env.position)
            self._positions.insert(i, env.position)
            self._log.insert(i, env)
        return len(events)

    def _make_key_store(self) -> KeyStore:
        return MemoryKeyStore()

    async def find_command(self, entity_type: str, entity_id: str, command_id: str) -> tuple[int, bytes | None] | None:
        return self._commands.get((entity_type, entity_id), {}).get(command_id)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshots.setdefault((snapshot.entity_type, snapshot.entity_id), {})[snapshot.seq] = snapshot

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        snaps = self._snapshots.get((entity_type, entity_id), {})
        seqs = [s for s in snaps if max_seq is None or s <= max_seq]
        return snaps[max(seqs)] if seqs else None

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        snaps = self._snapshots.get((entity_type, entity_id), {})
        for s in [s for s in snaps if s <= to_seq]:
            del snaps[s]

    async def load_checkpoint(self, name: str) -> int:
        return self._checkpoints.get(name, 0)

    async def save_checkpoint(self, name: str, position: int) -> None:
        self._checkpoints[name] = position
