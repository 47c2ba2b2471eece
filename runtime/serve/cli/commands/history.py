"""`memoir events` and `memoir state`: an entity's history and its fold, straight from the journal.

Both answer an entity with no events the same way (`not_found`, exit 1): a state of seq 0 for
an entity nobody ever wrote to would read as if it existed.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import msgspec

from ....engine.history import state_at
from ....model.entity import model_of
from ....model.errors import ConfigError
from ....wire.protocol import check_entity_id
from ...service.journal_reader import JournalReader, key_ring
from ..base import Subparsers, entity_type, subcommand
from ..outcome import not_found
from ..output import columns_of, json_line, print_rows, table
from ..reading import no_events, reading
from ..target import client_target


def event_dict(env: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """An envelope as `events --json` and `export` write it."""
    return {
        "entity_type": env.entity_type,
        "entity_id": env.entity_id,
        "seq": env.seq,
        "position": env.position,
        "event": env.name,
        "version": env.version,
        "recorded_at": env.recorded.isoformat(),
        "command_id": env.command_id,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "principal": env.principal,
        **payload,  # the decoded payload; sealed ones opened or kept sealed, forgotten ones marked (forgetting.py)
    }


def _shown(d: dict[str, Any]) -> Any:
    """The payload column: the payload, why it did not open, or that it was forgotten."""
    return "(forgotten)" if d.get("forgotten") else d.get("error") or d["payload"]


async def events(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    entity_type(target.app(), args.type)
    found: list[dict[str, Any]] = []
    async with reading(target) as journal:
        reader = JournalReader(journal)
        from_seq = 1
        while page := await journal.read(args.type, args.id, from_seq=from_seq, limit=1000):
            found.extend([event_dict(env, await reader.payload(env)) for env in page])
            from_seq = page[-1].seq + 1
        if not found:
            raise await no_events(journal, args.type, args.id)
    rows = [[d["seq"], d["recorded_at"], d["principal"], d["event"], _shown(d)] for d in found]
    print_rows(args, ["seq", "recorded", "principal", "event", "payload"], rows, found)
    return 0


def _when(args: argparse.Namespace) -> dt.datetime | None:
    if args.seq is not None and args.seq < 0:
        raise ConfigError(f"--seq {args.seq} is negative; seq 0 is the initial state, 1 the first event")
    if not args.at:
        return None
    try:
        at = dt.datetime.fromisoformat(args.at)
    except ValueError:
        raise ConfigError(f"--at {args.at!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)") from None
    if at.tzinfo is None:
        raise ConfigError(f"--at {args.at!r} has no timezone; add Z or +hh:mm")
    return at


async def state(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    model = model_of(entity_type(target.app(), args.type))
    at = _when(args)
    async with reading(target) as journal:
        keys = key_ring(journal) if model.encrypted else None
        value, seq = await state_at(journal, model, args.id, seq=args.seq, at=at, keys=keys)  # or EntityForgotten
        if seq == 0 and not await journal.read(args.type, args.id, from_seq=1, limit=1):
            raise await no_events(journal, args.type, args.id)
    if args.seq is not None and seq < args.seq:
        raise not_found(f"{args.type}/{args.id} has no seq {args.seq}: its last event is seq {seq}")
    if args.json:
        print(json_line({"seq": seq, "state": value}))
        return 0
    fields = msgspec.to_builtins(value)
    columns = columns_of([fields])
    cells = [fields.get(c) for c in columns] if isinstance(fields, dict) else [fields]
    print(table(["SEQ", *(c.upper() for c in columns)], [[seq, *cells]]))
    return 0


def add(sub: Subparsers) -> None:
    e = subcommand(
        sub,
        "events",
        "an entity's history, read from the journal",
        "memoir events inventory XYZ-1",
        "memoir events inventory XYZ-1 --json | jq .payload",
    )
    e.add_argument("type", metavar="TYPE", help="entity type, e.g. inventory")
    e.add_argument("id", metavar="ID", help="entity id, e.g. XYZ-1")
    e.set_defaults(fn=events)
    st = subcommand(
        sub,
        "state",
        "an entity's state now, after event N, or at a time: the fold of its events",
        "memoir state inventory XYZ-1",
        "memoir state inventory XYZ-1 --seq 1",
        "memoir state inventory XYZ-1 --at 2026-11-22T10:00:00Z --json",
    )
    st.add_argument("type", metavar="TYPE", help="entity type, e.g. inventory")
    st.add_argument("id", metavar="ID", help="entity id, e.g. XYZ-1")
    when = st.add_mutually_exclusive_group()
    when.add_argument("--seq", type=int, help="the state right after this event (0: the initial state)")
    when.add_argument("--at", help="the state as of this recorded time (ISO 8601 with timezone)")
    st.set_defaults(fn=state)
