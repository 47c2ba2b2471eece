"""`NatsDoor.answer`: a command another front door holds (HTTP) served in-process by the NATS door's
own function: the answer a NATS client gets, the same dedupe, the same tracing decision (a command
not sampled makes no span at all; a sampled parent's trace continues through `serve` and `turn`),
and no more at once than the door's queue holds."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from entities.inventory import InventoryItem
from runtime import MemoryJournal, Runtime
from runtime.serve.service import EmbeddedNats
from runtime.serve.service.nats_door import NatsDoor
from runtime.wire import tracing
from runtime.wire.nats import close_quietly, connect

pytestmark = pytest.mark.anyio

RECEIVE = b'{"units": 1, "on": "2022-03-01"}'
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_answer_serves_in_process_as_over_nats(tmp_path: Path) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))  # roots never sampled
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracing.use(provider)
    try:
        async with (
            EmbeddedNats(tmp_path / "nats") as server,
            MemoryJournal() as journal,
            Runtime([InventoryItem], journal) as rt,
            anyio.create_task_group() as tg,
        ):
            served, client = await connect(server.url), await connect(server.url)
            try:
                door = NatsDoor(rt, served, workers=2)
                await tg.start(door.run)
                sub = await client.subscribe("memoir.cmd.>")  # sees any NATS message a command would be
                await client.flush()
                first = await door.answer("inventory", "A", "receive", RECEIVE, {"Memoir-Command-Id": "c-1"})
                assert first is not None and json.loads(first) == {"ok": True, "result": 1, "seq": 1}
                again = await door.answer("inventory", "A", "receive", RECEIVE, {"Memoir-Command-Id": "c-1"})
                assert again is not None and json.loads(again) == {"ok": True, "result": 1, "seq": 1, "duplicate": True}
                over_nats = await client.request(
                    "memoir.cmd.inventory.A.receive", RECEIVE, timeout=10, headers={"Memoir-Command-Id": "c-1"}
                )
                assert over_nats.data == again
                bad = await door.answer("inventory", "A", "receive", b"{}", {})
                assert bad is not None and json.loads(bad)["error"]["code"] == "invalid"
                assert sub.pending_msgs == 1  # only the NATS client's own request
                await sub.unsubscribe()  # (a drain would wait for someone to read it)
                assert exported.get_finished_spans() == ()  # not sampled: not a span was made
                assert door.served == 4

                door.answering = 4096  # as many in-process commands at once as the queue holds
                full = await door.answer("inventory", "A", "receive", RECEIVE, {})
                assert full is not None and json.loads(full)["error"]["code"] == "overloaded"
                door.answering = 0

                parent = f"00-{TRACE}-00f067aa0ba902b7-01"  # a sampled caller: its trace goes on here
                traced = await door.answer("inventory", "B", "receive", RECEIVE, {"traceparent": parent})
                assert traced is not None and json.loads(traced)["ok"]
                await door.stop()
            finally:
                await close_quietly(served)
                await close_quietly(client)
        turn, serve = exported.get_finished_spans()
        assert (serve.name, turn.name) == ("serve inventory.receive", "turn inventory.receive")
        assert serve.context is not None and turn.parent is not None and serve.parent is not None
        assert f"{serve.context.trace_id:032x}" == TRACE and f"{serve.parent.span_id:016x}" == "00f067aa0ba902b7"
        assert turn.parent.span_id == serve.context.span_id
        (stored,) = await journal.read("inventory", "B")
        assert stored.correlation_id == TRACE
    finally:
        tracing.reset()
