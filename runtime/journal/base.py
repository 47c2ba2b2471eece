"""The journal protocol every backend implements, and its shared checks.

Semantics (the conformance suite in tests/journal holds every backend to them):
- `append` stores one entity's events atomically, all or none, only if the
  entity's highest seq is still `expected_seq`; otherwise `Conflict`.
  The events carry seqs `expected_seq + 1 …` and come back with positions.
- command ids: when the appended events carry a command id that the entity already
  stored (within the backend's documented window), `append` stores nothing and raises
  `DuplicateCommand` with the first write's seq and reply. This is checked before the
  seq check, so a repeat decided on a stale seq is still recognised as a repeat.
- a backend that cannot reach its storage, or whose storage is full, raises
  `Unavailable`; it reconnects by itself and serves again once storage is back.
- positions are strictly increasing and never reused; `read_all` returns events
  in position order, and a reader that has seen position P never later finds a
  new event below P (the property a tailer relies on).
- `read_types` is `read_all` for some entity types only: their events in position order
  (not gapless: the others' lie between), and how far the read looked (`Page.through`), so a
  reader of one type goes on past the others' events without reading them. `read_selected`
  is the same for a `Selection`: some types, some event names of any type, every entity's
  first event (the timer relay's).
- `delete` removes events (and, for the whole entity, marks it deleted); an
  entity's highest seq never goes down, so a seq is never reused.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self

import anyio

from ..model.envelope import Envelope, Recovery, Snapshot
from ..model.errors import JournalError
from .keys import KeyStore


class Page(NamedTuple):
    """A read of some entity types (`Journal.read_types`): their events, and how far it looked.

    Every event of those types with a position from the read's start up to `through` is in
    `events`; a reader goes on from `through + 1`. `through` may pass the last event (the
    others' events, or the journal's end, lie between), and is `from_position - 1` when the
    read found nothing new at all: only that means "no more for now".
    """

    events: list[Envelope]
    through: int


class Selection(NamedTuple):
    """Which events a tailer reads (`Journal.read_selected`): every event of `types`, every event
    named one of `names` whatever its type, and with `firsts` every entity's first event."""

    types: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    firsts: bool = False

    def keeps(self, env: Envelope) -> bool:
        return env.entity_type in self.types or env.name in self.names or (self.firsts and env.seq == 1)

    def empty(self) -> bool:
        return not (self.types or self.names or self.firsts)


class Journal(abc.ABC):
    """Where envelopes live. Use as `async with journal:`; every method is safe to call concurrently."""

    url: str = ""
    prefix: str = ""  # the subject prefix of a journal that is itself the event stream
    idle_poll: float = 5.0  # seconds between a tailer's reads while every append wakes it (`tail_poll`)
    _appended: anyio.Event | None = None

    def next_append(self) -> anyio.Event:
        """An event set by the next append: lets a tailer sleep until there is news.

        Take it *before* reading, so an append between the read and the wait is not missed.
        Appends in this process set it; appends by other processes only where `hears_others()`
        (PostgreSQL, through LISTEN/NOTIFY); otherwise tailers poll (`tail_poll`).
        """
        if self._appended is None or self._appended.is_set():
            self._appended = anyio.Event()
        return self._appended

    def hears_others(self) -> bool:
        """Whether other processes' appends set `next_append()` now (False: they go unseen)."""
        return False

    def tail_poll(self, fallback: float) -> float:
        """How long a tailer may wait on `next_append()` before it reads again anyway.

        `fallback`, the tailer's own short poll, while other processes' appends go unseen; else
        `idle_poll`, a slow safety net: an idle process then costs next to nothing. A backend
        whose hearing comes or goes sets the event when it does, so a sleeping tailer re-chooses.
        """
        return self.idle_poll if self.hears_others() else fallback

    def _notify_appended(self) -> None:
        if self._appended is not None:
            self._appended.set()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and create the schema; called by `async with`."""

    async def close(self) -> None:
        """Flush what was acknowledged and release the store."""

    # -- events ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        """Store one entity's events atomically if its highest seq is `expected_seq`."""

    @abc.abstractmethod
    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        """One entity's events with `from_seq <= seq <= to_seq`, in seq order."""

    @abc.abstractmethod
    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        """Every entity's events with position >= `from_position`, in position order.

        At most `limit`, and maybe fewer although more are stored (a read served from the
        writer's memory stops where its own appends do): only an empty read means "no more".
        """

    async def read_types(self, types: Collection[str], from_position: int = 1, limit: int = 1000) -> Page:
        """The events of `types` with position >= `from_position`, in position order (see `Page`).

        At most `limit`. A backend that can select by type (the SQL journals, by an index on
        the type and the position) does so, and reads only what it returns."""
        return await self.read_selected(Selection(frozenset(types)), from_position, limit)

    async def read_selected(self, selection: Selection, from_position: int = 1, limit: int = 1000) -> Page:
        """`read_types` for a `Selection`. This default reads everything and keeps the selected;
        the SQL journals select in the query."""
        if selection.empty() or limit < 1:
            return Page([], from_position - 1)
        page = await self.read_all(from_position, limit)
        return Page([e for e in page if selection.keeps(e)], page[-1].position if page else from_position - 1)

    @abc.abstractmethod
    async def head(self, entity_type: str, entity_id: str) -> int:
        """The highest seq ever appended to the entity (0 if none); deletion never lowers it."""

    @abc.abstractmethod
    async def last_position(self) -> int:
        """The highest position assigned so far (0 if none)."""

    @abc.abstractmethod
    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        """Delete events with seq <= `to_seq`; with no `to_seq`, the whole entity and its snapshots (a tombstone)."""

    async def find_command(self, entity_type: str, entity_id: str, command_id: str) -> tuple[int, bytes | None] | None:
        """Where the entity stored a command id: (seq of its last event, encoded reply), or None.

        None also means "cannot tell" for a backend that only dedupes on append; the actor
        asks only when a repeated command is about to be answered with an error.
        """
        return None

    def event_stream(self, entity_type: str) -> str | None:
        """The JetStream stream holding the type's events if the journal *is* that stream.

        None (the default) means the events live only here and the outbox publisher copies
        them to `{PREFIX}_EVENTS_{TYPE}`; one resolver (`streams.event_stream_for`) asks this.
        """
        return None

    def key_store(self) -> KeyStore:
        """The data keys of encrypted entity types, kept beside the events (one store per journal)."""
        store: KeyStore | None = self.__dict__.get("_key_store")
        if store is None:
            store = self.__dict__["_key_store"] = self._make_key_store()
        return store

    def _make_key_store(self) -> KeyStore:
        raise JournalError(f"{type(self).__name__} keeps no data keys: it cannot hold encrypted entities")

    # -- snapshots ------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot; one per (entity, seq), a later save at the same seq replaces it."""

    @abc.abstractmethod
    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        """The latest snapshot, or the latest at or below `max_seq`."""

    @abc.abstractmethod
    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        """Delete the entity's snapshots with seq <= `to_seq`."""

    # -- checkpoints (the publisher's and the views' positions, kept beside the events) --

    @abc.abstractmethod
    async def load_checkpoint(self, name: str) -> int:
        """A named reader's position (0 if never saved)."""

    @abc.abstractmethod
    async def save_checkpoint(self, name: str, position: int) -> None:
        """Store a named reader's position."""

    # -- recovery ---------------------------------------------------------------------------

    async def recover(self, entity_type: str, entity_id: str) -> Recovery:
        """Latest snapshot plus the events after it; backends override this to do it in one round trip."""
        snapshot = await self.load_snapshot(entity_type, entity_id)
        events = await self.read(entity_type, entity_id, from_seq=(snapshot.seq + 1) if snapshot else 1)
        head = await self.head(entity_type, entity_id)
        return Recovery(snapshot, events, head, deleted=await self.is_deleted(entity_type, entity_id))

    @abc.abstractmethod
    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        """Whether the whole entity was deleted."""


# The column order the SQL journals select events in; `envelope_from_row` reads it back.
ROW_COLUMNS = (
    "position",
    "entity_type",
    "entity_id",
    "seq",
    "name",
    "version",
    "recorded_at",
    "command_id",
    "correlation_id",
    "causation_id",
    "reply",
    "payload",
    "principal",
)


def envelope_from_row(r: Sequence[Any]) -> Envelope:
    """A stored event, from a row in `ROW_COLUMNS` order."""
    return Envelope(
        position=r[0],
        entity_type=r[1],
        entity_id=r[2],
        seq=r[3],
        name=r[4],
        version=r[5],
        recorded_at=r[6],
        command_id=r[7],
        correlation_id=r[8],
        causation_id=r[9],
        reply=None if r[10] is None else bytes(r[10]),
        payload=b"" if r[11] is None else bytes(r[11]),
        principal=r[12] if len(r) > 12 else None,
    )


def stream_envelopes(entity_type: str, entity_id: str, rows: Iterable[Sequence[Any]]) -> list[Envelope]:
    """One entity's stored events, from rows in `ROW_COLUMNS` order less its type and id.

    Recovery's hot path: the entity is known, so the rows need not join `streams` for it
    (a sixth of the read) and every envelope shares its two strings.
    """
    return [
        Envelope(
            entity_type=entity_type,
            entity_id=entity_id,
            position=position,
            seq=seq,
            name=name,
            version=version,
            recorded_at=recorded_at,
            command_id=command_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
            reply=None if reply is None else bytes(reply),
            payload=b"" if payload is None else bytes(payload),
            principal=principal,
        )
        for (
            position,
            seq,
            name,
            version,
            recorded_at,
            command_id,
            correlation_id,
            causation_id,
            reply,
            payload,
            principal,
        ) in rows
    ]


def row_values(env: Envelope) -> tuple[Any, ...]:
    """An event's stored columns after its position and stream: seq … payload, in `ROW_COLUMNS` order."""
    return (
        env.seq,
        env.name,
        env.version,
        env.recorded_at,
        env.command_id,
        env.correlation_id,
        env.causation_id,
        env.reply,
        env.payload,
        env.principal,
    )


def check_batch(events: Sequence[Envelope], expected_seq: int) -> tuple[str, str]:
    """Validate an append's shape before any backend touches storage; returns the entity key."""
    if not events:
        raise JournalError("append needs at least one event")
    if expected_seq < 0:
        raise JournalError(f"expected_seq must be >= 0, got {expected_seq}")
    first = events[0]
    for i, env in enumerate(events):
        if env.entity_type != first.entity_type or env.entity_id != first.entity_id:
            raise JournalError("one append holds the events of one entity")
        if env.seq != expected_seq + 1 + i:
            raise JournalError(
                f"{env.entity_type}/{env.entity_id}: event {i} has seq {env.seq}, expected {expected_seq + 1 + i}"
            )
    return first.entity_type, first.entity_id
