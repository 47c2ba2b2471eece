"""runtime/wire/otlp.py: the export request written directly is the one the OTLP exporter's own
encoder makes, for the spans Memoir makes (roots, children, remote parents, links, outcomes, an
exception's event, every attribute type), and `memoir run` sends it to a collector."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.wire import otlp, tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CORRELATION = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def spans() -> Iterator[list[ReadableSpan]]:
    exported = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "memoir-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracing.use(provider)
    try:
        for i in range(3):
            attributes = {"memoir.subject": f"memoir.cmd.inventory.SKU-{i}.receive"}
            serve = tracing.span("serve inventory.receive", kind=tracing.SERVER, parent=PARENT, attributes=attributes)
            with serve as sp:
                typed = {"memoir.command": "receive", "n": i, "neg": -3, "f": 1.5, "b": i == 1, "raw": b"\x00"}
                with tracing.child("turn inventory.receive", attributes=typed) as turn:
                    turn.set_attribute("memoir.events", [f"inventory/SKU-{i}/{i + 1}"])
                    links = [tracing.current(), tracing.event_link(CORRELATION, f"inventory/SKU-{i}/1")]
                    with tracing.span("journal batch", attributes={"memoir.batch": 2}, links=links):
                        pass
                tracing.set_outcome(sp, "ok" if i else "rejected")
        with pytest.raises(ValueError), tracing.span("fire", kind=tracing.CONSUMER):
            raise ValueError("refused")
        yield list(exported.get_finished_spans())
    finally:
        tracing.reset()


def test_the_request_is_the_sdk_encoders(spans: list[ReadableSpan]) -> None:
    assert len(spans) == 10
    ours = otlp.Encoder().request(spans)
    assert ExportTraceServiceRequest.FromString(ours) == encode_spans(spans)
    assert ours == encode_spans(spans).SerializeToString()  # the same bytes, as it happens


def test_what_repeats_is_written_from_the_cache_alike(spans: list[ReadableSpan]) -> None:
    encoder = otlp.Encoder()
    first = encoder.request(spans)
    assert encoder.request(spans) == first
    assert encoder.request(spans[:1]) == encode_spans(spans[:1]).SerializeToString()


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_exporter_posts_it(spans: list[ReadableSpan], monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        exporter = otlp.exporter()
        assert type(exporter).__name__ == "Exporter"  # not the SDK's own: its internals are the expected ones
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        assert ExportTraceServiceRequest.FromString(_Collector.bodies[-1]) == encode_spans(spans)
        exporter.shutdown()
    finally:
        server.shutdown()
        server.server_close()
