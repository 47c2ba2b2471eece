"""Crypto-shredding inside the actor: an entity's data key on its first write, and forgetting it.

Kept apart from actor.py, which calls in at three points: recovery (`existing_key`), before
the first append of an encrypted entity (`new_key`) and for `Runtime.forget` or a handler's
`forget()` effect. These functions see the key ring and the journal, never the actor: they
return what happened, and the actor updates its own state.
"""

from __future__ import annotations

import time

import structlog

from ..journal.base import Journal
from ..model.entity import EntityModel
from ..model.envelope import Envelope
from ..model.errors import CommandError, EntityDeleted, ErrorCode, JournalError, SealError, Unavailable
from ..model.events import spec_of
from ..model.sealing import Forgotten, SealKey
from .keyring import KeyRing

log = structlog.get_logger("memoir.actor")

FORGOTTEN = spec_of(Forgotten)


def keys(ring: KeyRing | None, model: EntityModel) -> KeyRing:
    if ring is None:
        raise CommandError(ErrorCode.INTERNAL, f"{model.type_name} is encrypted and this runtime has no key ring")
    return ring


async def existing_key(ring: KeyRing | None, model: EntityModel, entity_id: str) -> SealKey | None:
    """For recovery: the data key (None for an entity without one yet); EntityForgotten if destroyed."""
    return await keys(ring, model).existing(model.type_name, entity_id)


async def new_key(ring: KeyRing | None, model: EntityModel, entity_id: str) -> SealKey:
    """The entity's data key, created with its first event; a forgotten entity refuses the write (EntityForgotten)."""
    where = f"{model.type_name}/{entity_id}"
    try:
        return await keys(ring, model).for_write(model.type_name, entity_id)
    except Unavailable as exc:
        raise CommandError(ErrorCode.UNAVAILABLE, f"{where}: cannot read its data key: {exc}") from exc
    except (JournalError, SealError) as exc:
        raise CommandError(ErrorCode.INTERNAL, f"{where}: cannot read its data key: {exc}") from exc


class ForgetFailed(CommandError):
    """Storage failed part-way through a forget: the key may be gone or not; forgetting again completes it."""


async def forget(ring: KeyRing, journal: Journal, entity_type: str, entity_id: str, *, signal: bool = True) -> int:
    """Destroy the data key and the snapshots; returns the entity's head after it.

    The events stay, sealed under a key nobody has; snapshots, unreadable as well, are dropped.
    Then a `Forgotten` event, in the clear, tells views and consumers (`signal`). Each step is
    idempotent, so forgetting again completes a forget that was interrupted (`ForgetFailed`).
    The actor drops its own copies of the state.
    """
    t, i = entity_type, entity_id
    try:
        await ring.forget(t, i)
        head = await journal.head(t, i)
        await journal.delete_snapshots(t, i, head)
        if signal:
            head = await _signal(journal, t, i, head)
    except JournalError as exc:
        code = ErrorCode.UNAVAILABLE if isinstance(exc, Unavailable) else ErrorCode.INTERNAL
        raise ForgetFailed(code, f"{t}/{i}: forget failed: {exc}; retry") from exc
    log.info("entity forgotten", entity_type=t, entity_id=i)
    return head


async def _signal(journal: Journal, entity_type: str, entity_id: str, head: int) -> int:
    """Append the `Forgotten` event unless it is the last one already; returns the head after it."""
    last = await journal.read(entity_type, entity_id, from_seq=head) if head else []
    if last and last[-1].name == FORGOTTEN.name:
        return head
    marker = Envelope(
        entity_type=entity_type,
        entity_id=entity_id,
        seq=head + 1,
        name=FORGOTTEN.name,
        version=FORGOTTEN.version,
        payload=b"{}",
        recorded_at=time.time_ns(),
    )
    try:
        stored = await journal.append([marker], head)  # never sealed: it must outlive the key
    except EntityDeleted:
        return head  # a deleted entity has no events left to signal after
    return stored[-1].seq
