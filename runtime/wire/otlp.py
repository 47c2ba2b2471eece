"""Finished spans as an OTLP/protobuf export request, written directly, and the OTLP/HTTP exporter
that sends them so.

The OTLP exporter's own encoder builds a protobuf message object per span, attribute and link
and then serializes them: about 19 µs per span of a command (measured), in the exporter's
thread but under the GIL, so the serving loop waits for it. Here the same bytes are written
from the spans' fields (the few protobuf wire types OTLP uses), with what repeats (the
resource, the scope, attribute pairs, span names) written once: a few µs per span. The request
decodes to the message the SDK's encoder builds (a test compares them).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

_PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FIXED64 = struct.Struct("<Q").pack
_SMALL = [bytes((n,)) for n in range(128)]
_KIND = {0: b"\x30\x01", 1: b"\x30\x02", 2: b"\x30\x03", 3: b"\x30\x04", 4: b"\x30\x05"}  # SpanKind -> field 6
_FLAGS_LOCAL = b"\x85\x01" + (0x100).to_bytes(4, "little")  # field 16, fixed32: has-is-remote
_FLAGS_REMOTE = b"\x85\x01" + (0x300).to_bytes(4, "little")  # … and is-remote
_LINK_FLAGS_LOCAL = b"\x35" + (0x100).to_bytes(4, "little")  # a link's field 6
_LINK_FLAGS_REMOTE = b"\x35" + (0x300).to_bytes(4, "little")
_EMPTY_STATUS = b"\x7a\x00"
_CACHED = 4096  # entries kept per cache before it starts over


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


def _value(v: Any) -> bytes:
    """An AnyValue message's body."""
    if v is None:
        return b""
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, str):
        return _field(b"\x0a", v.encode())
    if isinstance(v, int):
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)  # int64: a negative one as 10 bytes
    if isinstance(v, float):
        return b"\x21" + _PACK_DOUBLE(v)
    if isinstance(v, bytes):
        return _field(b"\x3a", v)
    if isinstance(v, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(x)) for x in v]))
    if isinstance(v, Mapping):
        return _field(b"\x32", b"".join([_field(b"\x0a", _key_value(str(k), x)) for k, x in v.items()]))
    raise TypeError(f"an attribute cannot be a {type(v).__name__}")


def _key_value(key: str, v: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _value(v))


class Encoder:
    """Writes export requests; keeps what repeats between them (resources, scopes, attributes)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[bytes, str, str], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._heads: dict[tuple[int, int], tuple[bytes, bytes, Any, Any]] = {}

    def _attributes(self, tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
        """Each attribute as a KeyValue field with `tag`; a string-valued pair seen before is written
        once (only strings: `1 == True` would make an int's pair and a bool's one key)."""
        if not attributes:
            return []
        out = []
        pairs = self._pairs
        for key, v in attributes.items():
            if type(v) is not str:
                out.append(_field(tag, _key_value(key, v)))
                continue
            found = pairs.get((tag, key, v))
            if found is None:
                if len(pairs) >= _CACHED:
                    pairs.clear()
                found = pairs[tag, key, v] = _field(tag, _key_value(key, v))
            out.append(found)
        return out

    def _name(self, name: str) -> bytes:
        found = self._names.get(name)
        if found is None:
            if len(self._names) >= _CACHED:
                self._names.clear()
            found = self._names[name] = _field(b"\x2a", name.encode())
        return found

    def span(self, s: Any) -> bytes:
        """One Span message's body (field by field, in the order of their numbers)."""
        ctx = s.context
        parts = [b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"), b"\x12\x08" + ctx.span_id.to_bytes(8, "big")]
        if ctx.trace_state:
            parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()).encode()))
        parent = s.parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(self._name(s.name))
        parts.append(_KIND[s.kind.value])
        parts.append(b"\x39" + _PACK_FIXED64(s.start_time or 0))
        parts.append(b"\x41" + _PACK_FIXED64(s.end_time or 0))
        attributes = s.attributes
        if attributes:
            parts.extend(self._attributes(b"\x4a", attributes))
            if s.dropped_attributes:  # only ever with some kept
                parts.append(b"\x50" + _varint(s.dropped_attributes))
        events = s.events
        if events:
            for event in events:
                body = [b"\x09" + _PACK_FIXED64(event.timestamp), _field(b"\x12", event.name.encode())]
                if event.attributes:
                    body.extend(self._attributes(b"\x1a", event.attributes))
                    if event.dropped_attributes:
                        body.append(b"\x20" + _varint(event.dropped_attributes))
                parts.append(_field(b"\x5a", b"".join(body)))
            if s.dropped_events:
                parts.append(b"\x60" + _varint(s.dropped_events))
        links = s.links
        if links:
            for link in links:  # a publish links to each event it sent: the common link has no attributes
                lc = link.context
                ids = b"\x0a\x10" + lc.trace_id.to_bytes(16, "big") + b"\x12\x08" + lc.span_id.to_bytes(8, "big")
                flags = _LINK_FLAGS_REMOTE if lc.is_remote else _LINK_FLAGS_LOCAL
                if not link.attributes:
                    parts.append(b"\x6a\x21" + ids + flags)  # 33 bytes: 18 + 10 + 5
                    continue
                body = [ids, *self._attributes(b"\x22", link.attributes)]
                if link.dropped_attributes:
                    body.append(b"\x28" + _varint(link.dropped_attributes))
                body.append(flags)
                parts.append(_field(b"\x6a", b"".join(body)))
            if s.dropped_links:
                parts.append(b"\x70" + _varint(s.dropped_links))
        status = s.status
        if status.status_code.value or status.description:
            message = _field(b"\x12", status.description.encode()) if status.description else b""
            code = status.status_code.value
            parts.append(_field(b"\x7a", message + (b"\x18" + _varint(code) if code else b"")))
        else:
            parts.append(_EMPTY_STATUS)
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _head(self, resource: Any, scope: Any) -> tuple[bytes, bytes]:
        """The Resource field of a ResourceSpans and the scope field of a ScopeSpans, written once per
        pair (kept with the objects, so an id is never taken for another's)."""
        key = (id(resource), id(scope))
        found = self._heads.get(key)
        if found is None or found[2] is not resource or found[3] is not scope:
            res = b"".join(self._attributes(b"\x0a", resource.attributes))
            sc = b""
            if scope is not None:
                sc = (_field(b"\x0a", scope.name.encode()) if scope.name else b"") + (
                    _field(b"\x12", scope.version.encode()) if scope.version else b""
                )
                sc += b"".join(self._attributes(b"\x1a", scope.attributes))
            if len(self._heads) >= 64:
                self._heads.clear()
            found = self._heads[key] = (_field(b"\x0a", res), _field(b"\x0a", sc), resource, scope)
        return found[0], found[1]

    def request(self, spans: Sequence[Any]) -> bytes:
        """An ExportTraceServiceRequest holding `spans`, grouped by resource and then by scope (by
        identity: a Resource's hash is a JSON dump of its attributes, made on every call)."""
        grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for s in spans:
            resource, scope = s.resource, s.instrumentation_scope or None
            held = grouped.get(id(resource))
            if held is None:
                held = grouped[id(resource)] = (resource, {})
            mine = held[1].get(id(scope))
            if mine is None:
                mine = held[1][id(scope)] = (scope, [])
            mine[1].append(_field(b"\x12", self.span(s)))
        out = []
        for resource, scopes in grouped.values():
            body = []
            for scope, encoded in scopes.values():
                head, scope_field = self._head(resource, scope)
                scope_spans = [scope_field, *encoded]
                if scope is not None and scope.schema_url:
                    scope_spans.append(_field(b"\x1a", scope.schema_url.encode()))
                body.append(_field(b"\x12", b"".join(scope_spans)))
            if resource.schema_url:
                body.append(_field(b"\x1a", resource.schema_url.encode()))
            out.append(_field(b"\x0a", head + b"".join(body)))
        return b"".join(out)


def exporter() -> Any:
    """An OTLP/HTTP span exporter (configured by the `OTEL_EXPORTER_OTLP_*` variables, as the SDK's)
    that writes its requests with `Encoder`; the SDK's own where its internals are not the ones
    this was written against, or a batch fails to encode here (the SDK's then says why)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    class Exporter(OTLPSpanExporter):  # type: ignore[misc, unused-ignore]  # Any where the otel extra is not installed
        encoder = Encoder()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            if self._shutdown:
                return super().export(spans)
            try:
                data = self.encoder.request(spans)
            except Exception:  # noqa: BLE001 - the SDK's encoder reports it
                return super().export(spans)
            if 0 < self._max_request_size < len(data):
                return super().export(spans)  # it drops and says so
            sent = self._client.export(data)
            return SpanExportResult.SUCCESS if sent.success else SpanExportResult.FAILURE

    made = Exporter()
    if not all(hasattr(made, name) for name in ("_shutdown", "_max_request_size", "_client")):
        return OTLPSpanExporter()
    return made
