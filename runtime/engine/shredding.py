"""Crypto-shredding inside the actor: an entity's data key on its first write, and forgetting it.

Kept apart from actor.py, which calls in at two points: before the first append of an
encrypted entity (`new_key`) and for `Runtime.forget` or a handler's `forget()` effect.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import structlog

from ..model.entity import EntityModel
from ..model.envelope import Envelope
from ..model.errors import CommandError, EntityDeleted, ErrorCode, JournalError, JournalUnavailable
from ..model.events import spec_of
from ..model.sealing import EntityForgotten, Forgotten, SealError, SealKey
from .keyring import KeyRing

if TYPE_CHECKING:
    from .actor import Actor, ActorHost

log = structlog.get_logger("memoir.actor")

FORGOTTEN = spec_of(Forgotten)


def keys(host: ActorHost, model: EntityModel) -> KeyRing:
    if host.keys is None:
        raise CommandError(ErrorCode.INTERNAL, f"{model.type_name} is encrypted and this runtime has no key ring")
    return host.keys


async def existing_key(host: ActorHost, model: EntityModel, entity_id: str) -> SealKey | None:
    """For recovery: the data key (None for an entity without one yet); EntityForgotten if destroyed."""
    return await keys(host, model).existing(model.type_name, entity_id)


async def new_key(actor: Actor, host: ActorHost) -> SealKey:
    """The entity's data key, created with its first event; a forgotten entity refuses the write."""
    model = actor.model
    where = f"{model.type_name}/{actor.entity_id}"
    try:
        return await keys(host, model).for_write(model.type_name, actor.entity_id)
    except EntityForgotten as exc:
        actor.forgotten = True
        raise CommandError(ErrorCode.FORGOTTEN, str(exc)) from exc
    except JournalUnavailable as exc:
        raise CommandError(ErrorCode.UNAVAILABLE, f"{where}: cannot read its data key: {exc}") from exc
    except (JournalError, SealError) as exc:
        raise CommandError(ErrorCode.INTERNAL, f"{where}: cannot read its data key: {exc}") from exc


async def forget(actor: Actor, host: ActorHost, *, signal: bool = True) -> None:
    """Destroy the data key and every copy of the state in memory.

    The events stay, sealed under a key nobody has; snapshots, unreadable as well, are dropped.
    Then a `Forgotten` event, in the clear, tells views and consumers (`signal`). Each step is
    idempotent, so forgetting again completes a forget that was interrupted.
    """
    model = actor.model
    t, i = model.type_name, actor.entity_id
    try:
        await keys(host, model).forget(t, i)
        head = await host.journal.head(t, i)
        await host.journal.delete_snapshots(t, i, head)
        if signal:
            head = await _signal(host, t, i, head)
    except JournalError as exc:
        actor.recovered = False  # the key may be gone or not: ask the store on the next turn
        code = ErrorCode.UNAVAILABLE if isinstance(exc, JournalUnavailable) else ErrorCode.INTERNAL
        raise CommandError(code, f"{t}/{i}: forget failed: {exc}; retry") from exc
    actor.state, actor.key, actor.replies, actor.seq = model.initial, None, OrderedDict(), head
    actor.forgotten = actor.recovered = True
    log.info("entity forgotten", entity_type=t, entity_id=i)


async def _signal(host: ActorHost, entity_type: str, entity_id: str, head: int) -> int:
    """Append the `Forgotten` event unless it is the last one already; returns the head after it."""
    last = await host.journal.read(entity_type, entity_id, from_seq=head) if head else []
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
        stored = await host.journal.append([marker], head)  # never sealed: it must outlive the key
    except EntityDeleted:
        return head  # a deleted entity has no events left to signal after
    return stored[-1].seq
