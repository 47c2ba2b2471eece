"""A command a region member sends to another region's entity (a consumer's, a timer's, a workflow
step's: `RegionSender`) carries the sender's W3C traceparent: the primary region's door serves it
in the same trace, as a child of the sender's span."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support.regions import two_regions
from support.waiting import eventually

from runtime.serve.service.regions import RegionSender
from runtime.wire import tracing

pytestmark = pytest.mark.anyio


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)  # before the regions start: their doors look the tracer up once
    yield exporter
    tracing.reset()
    provider.shutdown()


async def test_a_command_sent_to_another_region_continues_the_senders_trace(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    async with two_regions(tmp_path) as regions:
        sender = regions.members["us"].service.sender
        assert isinstance(sender, RegionSender)
        with tracing.span("a step in us") as step:
            reply = await sender.ask("account", "T1", "deposit", {"amount": 3}, command_id="traced-1")
        assert reply.result == 3 and sender.sent == {"eu": 1}  # account is pinned to eu: it crossed
        ours = step.get_span_context()

        def served_in_eu() -> bool:
            return any(
                s.name == "serve account.deposit"
                and s.context.trace_id == ours.trace_id
                and s.parent is not None
                and s.parent.span_id == ours.span_id
                and (s.attributes or {}).get("memoir.subject", "").startswith("memoir.r.eu.")
                for s in exported.get_finished_spans()
            )

        await eventually(served_in_eu, what="eu's door span in the sender's trace, its child")
