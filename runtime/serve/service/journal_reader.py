"""`memoir forget` and the journal readers' view of forgotten entities.

Forgetting goes to the running runtime over NATS (`{prefix}.admin.forget`), so the
process that owns the entity destroys its key inside the entity's turn order and
every process drops its cached key and live actor. `--offline` applies it straight
to the data dir's journal, for when no runtime runs; it takes the data dir's lock, since
a running runtime would keep its cached key and go on writing under it.

`memoir events` and `memoir export` read the journal directly and show a forgotten
entity's events with their seqs, positions, names and times, and `"payload": null,
"forgotten": true`. `memoir events` (an operator looking at one entity) opens sealed
payloads with the key store beside the journal. `memoir export` writes an archive, so by
default it keeps them sealed (`"sealed": "<base64>"`): an archive made today still goes
unreadable when the entity is forgotten tomorrow. `--decrypt` opens them, for analytics
that accept holding a copy of the personal data outside the key's reach.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from ...engine.keyring import KeyRing, master_key_from_env
from ...engine.runtime import Runtime
from ...journal import Journal
from ...model.app import App
from ...model.envelope import Envelope
from ...model.errors import CommandError, SealError
from ...model.sealing import is_sealed


class ForgetArgs(msgspec.Struct, forbid_unknown_fields=True):
    """The payload of `{prefix}.admin.forget`."""

    entity_type: str = msgspec.field(name="type")
    entity_id: str = msgspec.field(name="id")


class ForgetResult(msgspec.Struct):
    forgotten: bool  # True once the entity is forgotten (now or before)
    already: bool  # it had been forgotten before this request


def key_ring(journal: Journal) -> KeyRing:
    """A key ring over the journal's key store, with the configured master key."""
    return KeyRing(journal.key_store(), master_key_from_env())


class JournalReader:
    """Opens the sealed payloads of a journal's envelopes for output, marking what cannot be opened."""

    def __init__(self, journal: Journal, *, decrypt: bool = True) -> None:
        self.journal = journal
        self.decrypt = decrypt
        self._ring: KeyRing | None = None
        self.unreadable = 0  # payloads that failed to open (tampered, moved): each named in its row

    async def payload(self, env: Envelope) -> dict[str, Any]:
        """`{"payload": …}`, or with `"payload": None`: `"forgotten": True`, `"sealed": base64` or `"error": why`."""
        if not is_sealed(env.payload):
            return {"payload": msgspec.json.decode(env.payload)}
        if self._ring is None:
            self._ring = key_ring(self.journal)
        try:
            opened = await self._ring.open(env)
        except SealError as exc:
            self.unreadable += 1
            return {"payload": None, "error": str(exc)}
        if opened is None:
            return {"payload": None, "forgotten": True}
        if not self.decrypt:
            return {"payload": None, "sealed": base64.b64encode(env.payload).decode()}
        return {"payload": msgspec.json.decode(opened.payload)}


async def forget_offline(app: App, journal: Journal, entity_type: str, entity_id: str) -> ForgetResult:
    """Forget on the journal itself, no runtime running; validated against the app like the runtime does."""
    refused: CommandError | None = None
    async with Runtime(app, journal, passivate_after=None) as rt:
        try:
            done = await rt.forget(entity_type, entity_id)
        except CommandError as exc:  # raised outside the runtime's task group: not an exception group
            refused = exc
    if refused is not None:
        raise refused
    return ForgetResult(forgotten=True, already=not done)
