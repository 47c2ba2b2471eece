"""What a journal stores: envelopes (an event plus its metadata) and snapshots.

The payload stays encoded JSON bytes all the way from the entity to the journal
and on to NATS: it is encoded once, when the event is decided, and decoded only
by whoever needs the object (recovery, a view, a consumer).
"""

from __future__ import annotations

import datetime as dt

import msgspec


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event. `position` is 0 until the journal assigns it on append."""

    entity_type: str
    entity_id: str
    seq: int  # 1, 2, 3 … within the entity, gap-free
    name: str  # the event's stored name (class name unless set with @event)
    version: int  # the event schema version it was written with
    payload: bytes  # JSON
    recorded_at: int  # unix time in nanoseconds
    position: int = 0  # order within the whole journal, strictly increasing
    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    # The command's encoded reply, on the last event a command with an id persisted:
    # how a repeated command id gets its first reply back after recovery.
    reply: bytes | None = None
    # Who asked: the verified caller's subject (the JWT `sub`); None for commands from inside
    # the process (consumers, timers) or from a runtime that verifies no tokens. The audit trail.
    principal: str | None = None

    @property
    def recorded(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.recorded_at / 1e9, tz=dt.UTC)

    @property
    def key(self) -> str:
        """`{type}/{id}/{seq}`: globally unique, the publisher's `Nats-Msg-Id`."""
        return f"{self.entity_type}/{self.entity_id}/{self.seq}"


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An entity's encoded state after event `seq`; opaque to the journal."""

    entity_type: str
    entity_id: str
    seq: int
    payload: bytes
    recorded_at: int


class SnapshotBody(msgspec.Struct, array_like=True):
    """A snapshot's payload as the engine writes it: the state and the recent command ids.

    The command ids ride along so a repeated command is recognised from memory after recovery;
    the journal stays the source of truth for older ones.
    """

    state: msgspec.Raw
    replies: list[tuple[str, int, msgspec.Raw]]  # (command id, seq, encoded reply)


class Recovery(msgspec.Struct, frozen=True):
    """Everything an actor needs to come alive: latest snapshot, the events after it, and the head."""

    snapshot: Snapshot | None
    events: list[Envelope]
    head: int  # highest seq ever written (deletion never lowers it)
    deleted: bool = False
