"""OpenTelemetry traces across real processes: the test's client and a `memoir run` each export
their spans (the client's in memory, the runtime's as JSON lines to a file), joined by trace id."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.process import RunningRuntime
from support.span_file import SPAN_FILE, read_spans, span_record, tree
from support.waiting import eventually

from runtime import Client
from runtime.wire import tracing
from runtime.wire.tracing import event_span_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """This process's spans, in memory, from a provider of its own (not the global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.reset()
    provider.shutdown()


def by_name(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


async def test_a_command_is_one_trace_from_the_client_to_the_entitys_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exported: InMemorySpanExporter
) -> None:
    span_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPAN_FILE, str(span_file))
    rt = RunningRuntime(tmp_path / "data", "tests.support.traced_app:app").start()
    try:
        async with Client(rt.nats_url, auth=rt.auth) as client:
            reply = await client.send("post", "p1", "publish", {"author": "ann", "text": "hi"})
            assert reply.seq == 1

            async def counted() -> bool:
                return bool((await client.send("profile", "ann", "get")).result["posts"] == 1)

            await eventually(counted, what="the consumer to count ann's post")

            async def viewed() -> bool:
                row = await client.request("memoir.view.posts_by_author.get", b'{"key": "ann"}')
                return row.result is not None

            await eventually(viewed, what="the view to hold ann's post")
    finally:
        assert rt.stop(signal.SIGTERM) == 0
    spans = [span_record(s) for s in exported.get_finished_spans()] + read_spans(span_file)
    send = by_name(spans, "send post.publish")
    serve = by_name(spans, "serve post.publish")
    turn = by_name(spans, "turn post.publish")
    assert send["kind"] == "client" and serve["kind"] == "server"
    assert serve["trace"] == turn["trace"] == send["trace"]
    assert (serve["parent"], turn["parent"]) == (send["span"], serve["span"])
    assert serve["attributes"]["memoir.outcome"] == "ok" and serve["status"] == "unset"
    assert turn["attributes"] == {"memoir.entity_id": "p1", "memoir.command": "publish", "memoir.events": ["post/p1/1"]}
    # later, the consumer: the same trace, under the event the turn stored
    consume = by_name(spans, "consume count_posts Published")
    counted_turn = by_name(spans, "turn profile.count_post")
    assert consume["kind"] == "consumer" and consume["trace"] == counted_turn["trace"] == send["trace"]
    assert consume["parent"] == event_span_id("post/p1/1") and counted_turn["parent"] == consume["span"]
    assert consume["attributes"] == {"memoir.event": "post/p1/1"}
    # the journal's batches it joined (its recovery's read, the group commit that stored its event):
    # each a trace of its own, linked to every turn it served
    batches = [s for s in spans if s["name"] == "journal batch sqlite" and turn["span"] in s["links"]]
    assert len(batches) == 2 and all(s["attributes"]["memoir.batch"] >= 1 for s in batches)
    # the outbox's publish of it: a span per journal read, linked to each event in its trace
    assert any(s["name"] == "publish" and event_span_id("post/p1/1") in s["links"] for s in spans)
    applied = by_name(spans, "apply posts_by_author Published")
    assert applied["trace"] == send["trace"] and applied["parent"] == event_span_id("post/p1/1")
    text = tree(spans, send["trace"])
    print(text)
    lines = text.splitlines()
    assert lines[:3] == [
        "send post.publish (client)",
        "  serve post.publish (server)",
        "    turn post.publish (internal)",
    ]
    consumed = lines.index("      consume count_posts Published (consumer)")  # the two reactions, in either order
    assert lines[consumed + 1] == "        turn profile.count_post (internal)"
    assert "      apply posts_by_author Published (consumer)" in lines and len(lines) == 6


async def test_a_transfer_is_one_trace_from_its_start_through_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exported: InMemorySpanExporter
) -> None:
    span_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPAN_FILE, str(span_file))
    rt = RunningRuntime(tmp_path / "data", "tests.support.traced_app:app").start()
    try:
        async with Client(rt.nats_url, auth=rt.auth) as client:
            await client.send("account", "a", "deposit", {"amount": 100})
            await client.send("transfer", "t1", "start", {"source": "a", "target": "b", "amount": 30})

            async def ended() -> bool:
                return bool((await client.send("transfer", "t1", "get")).result["status"] == "ended")

            await eventually(ended, what="the transfer to end")
    finally:
        assert rt.stop(signal.SIGTERM) == 0
    spans = [span_record(s) for s in exported.get_finished_spans()] + read_spans(span_file)
    start = by_name(spans, "send transfer.start")
    text = tree(spans, start["trace"])
    print(text)
    lines = text.splitlines()
    assert lines[:4] == [
        "send transfer.start (client)",
        "  serve transfer.start (server)",
        "    turn transfer.start (internal)",
        "    drive transfer (internal)",  # kicked once the start's turn moved the workflow on
    ]
    steps = [line.strip() for line in lines[4:]]
    assert steps[0] == "turn transfer.advance (internal)"
    assert "turn account.withdraw (internal)" in steps and "turn account.deposit (internal)" in steps
    assert steps.index("turn account.withdraw (internal)") < steps.index("turn account.deposit (internal)")
