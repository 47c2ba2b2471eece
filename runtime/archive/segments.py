"""Segment files and manifests: the archive's on-disk format, readable without Memoir.

A segment holds one entity's events `from_seq..to_seq` as JSON Lines, gzip-compressed (stdlib:
every analytics tool reads it; zstandard would be a new dependency for a few per cent): one
object per event with the envelope's fields, `payload` as the event's own JSON, or `sealed`
(base64) for an encrypted entity's frame, so forgetting an entity reaches the archive too, or
`raw` (base64) for bytes that cannot stand in a line as themselves (a line break, surrounding
spaces, not JSON): the journal gets back exactly the bytes it gave.
Replies travel as base64: metadata for dedupe, not for analytics.

A manifest per entity lists its segments with seq and position ranges, event count, size
and sha256; it is written after its segments (manifest-last), so it never names a file that
is not there. A run file per archiving pass lists the segments it added, for reads by position.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Sequence
from urllib.parse import quote

import msgspec

from ..model.envelope import Envelope
from ..model.errors import JournalError
from ..model.sealing import is_sealed

SUFFIX = ".jsonl.gz"


_NULL = msgspec.Raw(b"null")


class Line(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event in a segment file."""

    type: str
    id: str
    seq: int
    position: int
    name: str
    version: int
    recorded_at: int
    payload: msgspec.Raw = _NULL  # the event's JSON, as stored (left out when `sealed` or `raw` holds it)
    sealed: bytes | None = None  # an encrypted payload's frame (base64 in the file)
    raw: bytes | None = None  # a payload that is not one line of JSON, byte for byte (base64)
    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    reply: bytes | None = None
    principal: str | None = None


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """A segment file as its entity's manifest lists it."""

    path: str
    entity_type: str
    entity_id: str
    from_seq: int
    to_seq: int
    first_position: int  # the lowest position in the file
    last_position: int  # the highest
    count: int
    size: int
    sha256: str
    written_at: int  # unix nanoseconds


class Manifest(msgspec.Struct, kw_only=True):
    """An entity's archived segments, in seq order, contiguous."""

    entity_type: str
    entity_id: str
    segments: list[Segment] = msgspec.field(default_factory=list)

    @property
    def to_seq(self) -> int:
        """The highest archived seq (0 if none)."""
        return self.segments[-1].to_seq if self.segments else 0


class Run(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One archiving pass: the segments it added (the index reads by position use); or a tombstone's
    record: the segments deleted with their entity, which readers drop from the runs they loaded."""

    number: int
    segments: list[Segment]
    forgotten: list[str] = msgspec.field(default_factory=list)


def token(entity_id: str) -> str:
    """An id as one path segment: object stores treat `/` as a folder, and keys must stay printable."""
    return quote(entity_id, safe="-_.~") or "%"


def segment_path(entity_type: str, entity_id: str, from_seq: int, to_seq: int) -> str:
    return f"segments/{token(entity_type)}/{token(entity_id)}/{from_seq:020d}-{to_seq:020d}{SUFFIX}"


def manifest_path(entity_type: str, entity_id: str) -> str:
    return f"manifests/{token(entity_type)}/{token(entity_id)}.json"


def run_path(number: int) -> str:
    return f"runs/{number:020d}.json"


_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(Line)


def _line(env: Envelope) -> Line:
    payload, sealed, raw = _NULL, None, None
    if is_sealed(env.payload):
        sealed = env.payload
    elif _one_json_line(env.payload):
        payload = msgspec.Raw(env.payload)
    else:
        raw = env.payload
    return Line(
        type=env.entity_type,
        id=env.entity_id,
        seq=env.seq,
        position=env.position,
        name=env.name,
        version=env.version,
        recorded_at=env.recorded_at,
        payload=payload,
        sealed=sealed,
        raw=raw,
        command_id=env.command_id,
        correlation_id=env.correlation_id,
        causation_id=env.causation_id,
        reply=env.reply,
        principal=env.principal,
    )


def _one_json_line(data: bytes) -> bool:
    """Whether the payload can stand in a line as itself: JSON, no line break, nothing around it
    (a JSON value is read back without its surrounding spaces, and the journal must get back its bytes)."""
    if not data or data != data.strip() or b"\n" in data or b"\r" in data:
        return False
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def encode(events: Sequence[Envelope]) -> bytes:
    """A segment file's bytes; deterministic (no timestamp in the gzip header), so a rewrite is identical."""
    text = b"".join(_encoder.encode(_line(e)) + b"\n" for e in events)
    return gzip.compress(text, compresslevel=6, mtime=0)


def decode(data: bytes, what: str) -> list[Envelope]:
    """The events of a segment file; a damaged file is a `JournalError` naming it."""
    try:
        text = gzip.decompress(data)
        lines = [_line_decoder.decode(line) for line in text.split(b"\n") if line]
    except (OSError, EOFError, msgspec.DecodeError, ValueError) as exc:
        raise JournalError(f"archive segment {what} is damaged: {exc}") from None
    if not lines:
        raise JournalError(f"archive segment {what} is damaged: no events in it")
    return [
        Envelope(
            entity_type=x.type,
            entity_id=x.id,
            seq=x.seq,
            position=x.position,
            name=x.name,
            version=x.version,
            recorded_at=x.recorded_at,
            payload=x.sealed if x.sealed is not None else x.raw if x.raw is not None else bytes(x.payload),
            command_id=x.command_id,
            correlation_id=x.correlation_id,
            causation_id=x.causation_id,
            reply=x.reply,
            principal=x.principal,
        )
        for x in lines
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(path: str, events: Sequence[Envelope], data: bytes, written_at: int) -> Segment:
    """The manifest entry of a segment about to be written."""
    first = events[0]
    return Segment(
        path=path,
        entity_type=first.entity_type,
        entity_id=first.entity_id,
        from_seq=first.seq,
        to_seq=events[-1].seq,
        first_position=min(e.position for e in events),
        last_position=max(e.position for e in events),
        count=len(events),
        size=len(data),
        sha256=sha256(data),
        written_at=written_at,
    )
