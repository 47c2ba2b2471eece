"""The segment format keeps every envelope exactly: JSON payloads as JSON, anything else (a sealed frame,
bytes that are not JSON, nothing) byte for byte; and a damaged file is an error naming it."""

from __future__ import annotations

import gzip

import msgspec
import pytest

from runtime.archive import segments
from runtime.model.envelope import Envelope
from runtime.model.errors import JournalError


def env(seq: int, payload: bytes, **extra: object) -> Envelope:
    return Envelope(entity_type="t", entity_id="ü/ß 1", seq=seq, position=seq * 10, name="E", version=2,
                    payload=payload, recorded_at=123, **extra)  # type: ignore[arg-type]  # fmt: skip


def test_every_field_round_trips() -> None:
    events = [
        env(1, b'{"a": [1, 2.5, "x"]}', command_id="c", correlation_id="r", causation_id="k", principal="ann"),
        env(2, b"\x00\x01sealed frame\xff", reply=b"\x00not json"),
        env(3, b"not json at all"),
        env(4, b""),
        env(5, b'  {"spaces": true}  ', reply=b'{"ok": 1}'),
        env(6, b'{\n  "pretty": "printed"\n}'),
        env(7, '"line\u2028separator"'.encode()),
    ]
    data = segments.encode(events)
    assert segments.decode(data, "x") == events
    assert segments.encode(events) == data  # deterministic: a rewrite after a crash is the same file
    first = msgspec.json.decode(gzip.decompress(data).splitlines()[0])
    assert first["payload"] == {"a": [1, 2.5, "x"]}  # the event's own JSON, for analytics
    second = msgspec.json.decode(gzip.decompress(data).splitlines()[1])
    assert "payload" not in second and "sealed" in second
    assert len(gzip.decompress(data).split(b"\n")) == len(events) + 1  # one line per event


def test_paths_keep_one_segment_per_id() -> None:
    assert segments.segment_path("t", "a/b c", 1, 20) == (
        "segments/t/a%2Fb%20c/00000000000000000001-00000000000000000020.jsonl.gz"
    )
    assert segments.manifest_path("t", "") == "manifests/t/%.json"


@pytest.mark.parametrize("data", [b"", b"not gzip", gzip.compress(b'{"type": "t"}\n'), gzip.compress(b"{")])
def test_a_damaged_segment_is_named(data: bytes) -> None:
    with pytest.raises(JournalError, match="archive segment seg-1 is damaged"):
        segments.decode(data, "seg-1")
