"""The events consumers parked, as an operator sees them: listed, shown, replayed, purged.

A parked event is a message in `{PREFIX}_DEADLETTER` on `{prefix}.deadletter.{consumer}`
(`consumer.ConsumerRunner._dead_letter`): the event's own headers and payload, plus why it
was parked (`Memoir-Error`) and where it came from (`Memoir-Original-Subject`). Its sequence
in that stream is its handle. Replaying one runs the consumer's handler on the event again
(`ConsumerRunner.react`); the commands it sends carry the ids derived from the event, as the
first time, so an effect that already happened is not repeated. Once the handler succeeds the
message is deleted; if it fails again, it stays parked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from ..model.envelope import Envelope
from ..wire.protocol import envelope_from_message, stream_prefix
from .consumer import dead_letter_subject

H_ERROR = "Memoir-Error"
H_ORIGINAL = "Memoir-Original-Subject"
MAX_LIST = 1000


class Parked(msgspec.Struct, frozen=True, kw_only=True):
    """One parked event as listed: `seq` is its handle for show, replay and purge."""

    seq: int
    consumer: str
    event: str  # `{type}/{id}/{seq}`, the event's key (and the first command id it sends)
    name: str  # the event's stored name
    error: str
    parked_at: str  # ISO 8601, UTC


class ParkedEvent(Parked, frozen=True, kw_only=True):
    """One parked event in full: the listing's fields plus what the event carried."""

    subject: str
    correlation_id: str | None
    causation_id: str | None
    payload: msgspec.Raw  # the event's JSON (or its sealed form, for an encrypted type)


def dead_letter_stream(prefix: str) -> str:
    return f"{stream_prefix(prefix)}_DEADLETTER"


class DeadLetters:
    """The parked events of every consumer under one prefix, read and removed through JetStream."""

    def __init__(self, js: Any, prefix: str) -> None:
        self.js = js
        self.prefix = prefix
        self.stream = dead_letter_stream(prefix)

    def subject(self, consumer: str) -> str:
        return dead_letter_subject(self.prefix, consumer)

    async def count(self, consumer: str) -> int:
        """How many events `consumer` has parked now."""
        subject = self.subject(consumer)
        try:
            info = await self.js.stream_info(self.stream, subjects_filter=subject)
        except NotFoundError:
            return 0
        return int((info.state.subjects or {}).get(subject, 0))

    async def list(self, consumer: str, *, after: int = 0, limit: int = 100) -> list[Parked]:
        """Up to `limit` parked events of `consumer` after stream sequence `after`, oldest first."""
        found: list[Parked] = []
        seq = after + 1
        while len(found) < min(limit, MAX_LIST):
            raw = await self._next(consumer, seq)
            if raw is None:
                break
            found.append(_parked(consumer, raw, full=False))
            seq = raw.seq + 1
        return found

    async def show(self, consumer: str, seq: int) -> ParkedEvent | None:
        raw = await self._at(consumer, seq)
        return None if raw is None else _parked(consumer, raw, full=True)  # type: ignore[return-value]

    async def envelope(self, consumer: str, seq: int) -> Envelope | None:
        """The parked event as its consumer first saw it, or None if `seq` is not one of its."""
        raw = await self._at(consumer, seq)
        if raw is None:
            return None
        headers = raw.headers or {}
        return envelope_from_message(headers.get(H_ORIGINAL, ""), headers, raw.data or b"")

    async def remove(self, seq: int) -> None:
        """Delete one parked event (after its replay succeeded)."""
        with contextlib.suppress(NotFoundError):  # removed already (another replay, a purge): same outcome
            await self.js.delete_msg(self.stream, seq)

    async def purge(self, consumer: str, *, seq: int | None = None) -> int:
        """Drop `consumer`'s parked events (or only the one at `seq`); how many were dropped."""
        if seq is not None:
            if await self._at(consumer, seq) is None:
                return 0
            await self.remove(seq)
            return 1
        n = await self.count(consumer)
        if n:
            await self.js.purge_stream(self.stream, subject=self.subject(consumer))
        return n

    async def _at(self, consumer: str, seq: int) -> Any:
        raw = await self._next(consumer, seq)
        return raw if raw is not None and raw.seq == seq else None

    async def _next(self, consumer: str, seq: int) -> Any:
        try:
            return await self.js.get_msg(self.stream, seq=seq, subject=self.subject(consumer), next=True)
        except NotFoundError:
            return None


def _parked(consumer: str, raw: Any, *, full: bool) -> Parked:
    headers = raw.headers or {}
    subject = headers.get(H_ORIGINAL, "")
    data = raw.data or b""
    try:
        env = envelope_from_message(subject, headers, data)
        key, name = env.key, env.name
    except ValueError:  # not an event (a timer's parked firing): shown as what it is
        env, key, name = None, subject, headers.get("Memoir-Event", "?")
    when = raw.time if isinstance(raw.time, dt.datetime) else dt.datetime.fromtimestamp(0, dt.UTC)
    common = {
        "seq": raw.seq,
        "consumer": consumer,
        "event": key,
        "name": name,
        "error": headers.get(H_ERROR, ""),
        "parked_at": when.astimezone(dt.UTC).isoformat(),
    }
    if not full:
        return Parked(**common)
    return ParkedEvent(
        **common,
        subject=subject,
        correlation_id=None if env is None else env.correlation_id,
        causation_id=None if env is None else env.causation_id,
        payload=msgspec.Raw(data if _is_json(data) else msgspec.json.encode(data.decode("utf-8", "replace"))),
    )


def _is_json(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return bool(data)
