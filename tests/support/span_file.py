"""Spans of a real process, for tests: each finished span as one JSON line in the file named by
`MEMOIR_TEST_SPAN_FILE`, and the lines of several processes joined into trees by trace id."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from runtime.wire.tracing import event_span_id

SPAN_FILE = "MEMOIR_TEST_SPAN_FILE"


def span_record(s: ReadableSpan) -> dict[str, Any]:
    assert s.context is not None
    return {
        "name": s.name,
        "trace": f"{s.context.trace_id:032x}",
        "span": f"{s.context.span_id:016x}",
        "parent": None if s.parent is None else f"{s.parent.span_id:016x}",
        "kind": s.kind.name.lower(),
        "start": s.start_time,
        "links": [f"{link.context.span_id:016x}" for link in s.links],
        "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in (s.attributes or {}).items()},
        "status": s.status.status_code.name.lower(),
        "process": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as f:
            for s in spans:
                f.write(json.dumps(span_record(s)) + "\n")
        return SpanExportResult.SUCCESS


def install_from_env() -> None:
    """In a process under test: the global tracer provider writes to `MEMOIR_TEST_SPAN_FILE`, if set."""
    path = os.environ.get(SPAN_FILE)
    if path:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(path))))
        trace.set_tracer_provider(provider)


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tree(spans: list[dict[str, Any]], trace_id: str) -> str:
    """One trace's spans as an indented tree (name and kind), a reaction to an event under the
    turn that stored it (its parent is the event's id, which that turn lists in `memoir.events`)."""
    mine = sorted((s for s in spans if s["trace"] == trace_id), key=lambda s: s["start"])
    via = {event_span_id(k): s["span"] for s in mine for k in s["attributes"].get("memoir.events", [])}
    parents = {s["span"]: via.get(s["parent"], s["parent"]) for s in mine}
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in mine:
            up = parents[s["span"]]
            if up == parent or (parent is None and up not in parents):
                lines.append(f"{'  ' * depth}{s['name']} ({s['kind']})")
                walk(s["span"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)
