"""Traces across three `memoir run --cluster` members on PostgreSQL: a post sent to any member is
one trace through the forward to its owner, the consumer wherever it runs, and the profile's owner.
Each member writes its spans to one JSON-lines file (support/span_file.py), the test's client
keeps its own in memory; they are joined by trace id."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.members import Member, wait_cluster
from support.span_file import SPAN_FILE, read_spans, span_record, tree
from support.waiting import eventually

from runtime import Client
from runtime.wire import tracing

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio
POSTS = 6


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.reset()
    provider.shutdown()


async def test_a_post_is_one_trace_across_the_members(
    nats_cluster: NatsCluster,
    pg_schema: str,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exported: InMemorySpanExporter,
) -> None:
    span_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv(SPAN_FILE, str(span_file))
    pg = f"{postgres_url}?schema={pg_schema}"
    urls = nats_cluster.urls
    app = "tests.support.traced_app:app"
    members = [Member.member(i, urls[i], pg, pg, pg_schema, tmp_path, app) for i in range(3)]
    stopped: dict[str, int | None] = {}
    try:
        for m in members:
            m.start()
        await wait_cluster(urls[0], pg_schema, 3, members, timeout=90)
        # direct=False: as any NATS client sends (the shared subject), so a non-owner forwards the post
        async with Client(urls[0], prefix=pg_schema, direct=False) as client:
            for i in range(POSTS):
                await client.send("post", f"tr-p{i}", "publish", {"author": f"tr-a{i}", "text": "hi"}, timeout=30)

            async def counted() -> bool:
                for i in range(POSTS):
                    if (await client.send("profile", f"tr-a{i}", "get", timeout=30)).result["posts"] != 1:
                        return False
                return True

            await eventually(counted, 60, "every post counted by the consumer")
    finally:
        stopped = {m.name: m.signal(signal.SIGTERM) for m in members if m.proc is not None}
    assert set(stopped.values()) == {0}, stopped

    spans = [span_record(s) for s in exported.get_finished_spans()] + read_spans(span_file)
    sends = [s for s in spans if s["name"] == "send post.publish"]
    assert len(sends) == POSTS
    processes = set()
    for send in sends:
        text = tree(spans, send["trace"])
        lines = text.splitlines()
        assert sum(not line.startswith(" ") for line in lines) == 1, text  # one root: every span attached
        assert "turn post.publish (internal)" in text and "consume count_posts Published (consumer)" in text, text
        assert "turn profile.count_post (internal)" in text, text
        processes |= {s["process"] for s in spans if s["trace"] == send["trace"]}
        print(text)
    assert len(processes) == 4, "the client and all three members took part in these traces"
    assert any(s["name"] == "forward post" for s in spans), "no post was forwarded to its owner"
