"""What the console reads from the journal: one page of an entity's history, each event with the
state after it, at the cost of one time travel plus the page (not a fold from seq 1).

The fold is `engine.history`'s: from the state at the page's first seq minus one (a snapshot at or
below it when there is one), then each event of the page; a timer's events show the state unchanged.
"""

from __future__ import annotations

from typing import Any

from .....engine.history import HistoryItem, state_at
from .....engine.keyring import open_envelope
from .....journal import Journal
from .....model.entity import EntityModel
from .....model.timer_events import decode_op, is_system
from ...journal_reader import key_ring

PAGE_SIZE = 50


async def history_page(
    journal: Journal, model: EntityModel, entity_id: str, first: int, size: int = PAGE_SIZE
) -> list[HistoryItem]:
    """Events `first`… (at most `size`), each with the state right after it."""
    keys = key_ring(journal) if model.encrypted else None
    state: Any = model.initial
    if first > 1:
        state, _ = await state_at(journal, model, entity_id, seq=first - 1, keys=keys)
    key = await keys.existing(model.type_name, entity_id) if keys is not None else None
    entity = model.cls(entity_id)
    out = []
    for env in await journal.read(model.type_name, entity_id, from_seq=first, limit=size):
        env = open_envelope(key, env) if model.encrypted else env
        if is_system(env.name) and not model.codec.knows(env.name):
            op = decode_op(env.name, env.payload)
            if op is not None:
                out.append(HistoryItem(env, op, state))
            continue
        event = model.codec.decode(env)
        state = model.apply(entity, state, event)
        out.append(HistoryItem(env, event, state))
    return out


async def state_after(journal: Journal, model: EntityModel, entity_id: str, seq: int | None) -> tuple[Any, int]:
    """The state after `seq` (None: now), and the seq it is at."""
    keys = key_ring(journal) if model.encrypted else None
    return await state_at(journal, model, entity_id, seq=seq, keys=keys)
