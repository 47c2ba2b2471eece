"""Reading the past: an entity's history and its state at any seq or time.

State is never stored in place, so any past state is a fold of the events up
to that point. `state_at` starts from the latest snapshot at or below the seq
when it can (and no time bound is asked), so time travel on a long history
costs what recovery costs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..journal import Journal
from ..model.entity import EntityModel
from ..model.envelope import Envelope, SnapshotBody
from ..model.errors import ConfigError
from ..model.sealing import SealKey
from ..model.timer_events import decode_op, is_system
from .keyring import KeyRing, open_envelope, open_snapshot

PAGE = 1000


class HistoryItem(msgspec.Struct, frozen=True):
    """One step of an entity's history: the stored envelope, its decoded event, and the state after it."""

    envelope: Envelope
    event: msgspec.Struct
    state: Any  # the state right after this event


async def _key(keys: KeyRing | None, model: EntityModel, entity_id: str) -> SealKey | None:
    """The data key of an encrypted entity (EntityForgotten if destroyed); None for a plain one."""
    if not model.encrypted:
        return None
    if keys is None:
        raise ConfigError(f"{model.type_name} is encrypted: reading its history needs the journal's key ring")
    return await keys.existing(model.type_name, entity_id)


async def _envelopes(
    journal: Journal, model: EntityModel, entity_id: str, from_seq: int, to_seq: int | None, key: SealKey | None
) -> AsyncIterator[Envelope]:
    while True:
        page = await journal.read(model.type_name, entity_id, from_seq=from_seq, to_seq=to_seq, limit=PAGE)
        for env in page:
            yield open_envelope(key, env) if model.encrypted else env
        if len(page) < PAGE:
            return
        from_seq = page[-1].seq + 1


async def history(
    journal: Journal, model: EntityModel, entity_id: str, *, to_seq: int | None = None, keys: KeyRing | None = None
) -> AsyncIterator[HistoryItem]:
    """Each stored event of an entity, decoded, with the state right after it.

    An encrypted entity needs `keys`; a forgotten one raises EntityForgotten.
    """
    entity = model.cls(entity_id)
    state = model.initial
    key = await _key(keys, model, entity_id)
    async for env in _envelopes(journal, model, entity_id, 1, to_seq, key):
        if is_system(env.name) and not model.codec.knows(env.name):  # a timer: shown as itself, the state unchanged
            op = decode_op(env.name, env.payload)
            if op is not None:
                yield HistoryItem(env, op, state)
            continue
        event = model.codec.decode(env)
        state = model.apply(entity, state, event)
        yield HistoryItem(env, event, state)


def _ns(at: dt.datetime) -> int:
    if at.tzinfo is None:
        raise ValueError(f"time {at.isoformat()} has no timezone; say which (e.g. 2022-03-01T00:00:00Z)")
    return int(at.timestamp() * 1e9)


async def state_at(
    journal: Journal,
    model: EntityModel,
    entity_id: str,
    *,
    seq: int | None = None,
    at: dt.datetime | None = None,
    keys: KeyRing | None = None,
) -> tuple[Any, int]:
    """The entity's state after event `seq`, or as of recorded time `at`; returns (state, seq)."""
    entity = model.cls(entity_id)
    state, last, from_seq = model.initial, 0, 1
    key = await _key(keys, model, entity_id)
    if at is None:
        snap = await journal.load_snapshot(model.type_name, entity_id, max_seq=seq)
        if snap is not None:
            body = msgspec.json.decode(open_snapshot(key, snap).payload, type=SnapshotBody)
            state, last, from_seq = model.state_decoder.decode(body.state), snap.seq, snap.seq + 1
    limit_ns = None if at is None else _ns(at)
    async for env in _envelopes(journal, model, entity_id, from_seq, seq, key):
        if limit_ns is not None and env.recorded_at > limit_ns:
            break
        if not is_system(env.name) or model.codec.knows(env.name):  # a key-value entity's states are system events
            state = model.apply(entity, state, model.codec.decode(env))
        last = env.seq
    return state, last
