"""Events as the HTTP API shows them: in a history page and in each frame of a live tail."""

from __future__ import annotations

from typing import Any

import msgspec

from ....model.envelope import Envelope
from ..journal_reader import JournalReader


class EventRecord(msgspec.Struct, omit_defaults=True):
    """An event as the HTTP API shows it (as `memoir events --json` prints it).

    The payload of an encrypted entity is opened; a forgotten one is null with `forgotten: true`.
    """

    entity_type: str
    entity_id: str
    seq: int
    position: int
    event: str
    version: int
    recorded_at: str
    command_id: str | None
    correlation_id: str | None
    causation_id: str | None
    principal: str | None
    payload: Any
    forgotten: bool = False
    error: str | None = None


async def event_record(env: Envelope, reader: JournalReader) -> EventRecord:
    opened = await reader.payload(env)
    return EventRecord(
        env.entity_type,
        env.entity_id,
        env.seq,
        env.position,
        env.name,
        env.version,
        env.recorded.isoformat(),
        env.command_id,
        env.correlation_id,
        env.causation_id,
        env.principal,
        opened.get("payload"),
        bool(opened.get("forgotten", False)),
        opened.get("error"),
    )
