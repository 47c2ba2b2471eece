"""runtime/wire/spans.py: Memoir's own recording spans reach the SDK's processors as the SDK's
spans would, are used only for samplers whose decisions they follow exactly, and are the current
span for code instrumented with OpenTelemetry inside them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

from runtime.wire import spans, tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class EveryOther(Sampler):
    """A sampler that reads more than the trace id: Memoir's spans cannot follow it."""

    def __init__(self) -> None:
        self.n = 0

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.n += 1
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.n % 2 else Decision.DROP)

    def get_description(self) -> str:
        return "every other"


def provider_with(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    provider, exported = provider_with()
    tracing.use(provider)
    assert tracing._records is not None, "the SDK's default sampler is one Memoir's spans follow"
    yield exported
    tracing.reset()


@pytest.mark.parametrize(
    ("sampler", "ours"),
    [
        (None, True),  # the SDK's default: ParentBased(ALWAYS_ON)
        (ParentBasedTraceIdRatio(0.5), True),  # OTEL_TRACES_SAMPLER=parentbased_traceidratio
        (ParentBased(TraceIdRatioBased(0.1)), True),
        (TraceIdRatioBased(0.5), False),  # not parent-based: a parent's flag does not decide
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON), False),  # not the default delegates
        (ParentBased(EveryOther()), False),
    ],
)
def test_memoirs_spans_only_for_samplers_they_follow_exactly(sampler: Sampler | None, ours: bool) -> None:
    provider, exported = provider_with(sampler)
    tracing.use(provider)
    try:
        assert (tracing._records is not None) is ours
        with tracing.span("serve", kind=tracing.SERVER, parent=PARENT) as made:
            pass
        assert isinstance(made, spans.Recording) is ours
        assert [s.name for s in exported.get_finished_spans()] in (["serve"], [])
    finally:
        tracing.reset()


def test_a_recording_ends_as_the_sdks_span_would(recorded: InMemorySpanExporter) -> None:
    link = trace.SpanContext(7, 9, is_remote=True, trace_flags=trace.TraceFlags(1))
    with (
        pytest.raises(ValueError, match="refused"),
        tracing.span("serve", kind=tracing.SERVER, parent=PARENT, attributes={"a": 1}) as outer,
    ):
        with tracing.span("turn", links=[link]) as inner:
            inner.set_attribute("memoir.events", ["post/p1/1", "post/p1/2"])
            inner.set_attribute("dropped", object())  # not an attribute value: dropped, as the SDK does
        raise ValueError("refused")
    turn, serve = recorded.get_finished_spans()
    assert all(isinstance(s, ReadableSpan) for s in (turn, serve))
    assert serve.kind is trace.SpanKind.SERVER and turn.kind is trace.SpanKind.INTERNAL
    assert serve.parent is not None and serve.parent.is_remote and f"{serve.parent.span_id:016x}" == PARENT[36:52]
    assert turn.parent == serve.context and turn.context is not None and serve.context is not None
    assert turn.context.trace_id == serve.context.trace_id == int(PARENT[3:35], 16)
    assert turn.attributes == {"memoir.events": ("post/p1/1", "post/p1/2")}
    assert [x.context for x in turn.links] == [link]
    assert serve.status.status_code is trace.StatusCode.ERROR and serve.status.description == "ValueError: refused"
    (event,) = serve.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError" and event.attributes["exception.message"] == "refused"
    assert serve.start_time is not None and serve.end_time is not None and serve.start_time <= serve.end_time
    assert serve.resource is not None and serve.instrumentation_scope is not None
    assert serve.instrumentation_scope.name == "memoir"
    assert not outer.is_recording()


def test_instrumented_code_inside_a_recording_is_its_child() -> None:
    provider, exported = provider_with()
    tracing.use(provider)
    try:
        with tracing.span("consume"), provider.get_tracer("an instrumented library").start_as_current_span("GET"):
            ctx = trace.get_current_span().get_span_context()
            assert tracing.traceparent() == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        http, consume = exported.get_finished_spans()
        assert http.parent == consume.context and http.name == "GET"
    finally:
        tracing.reset()


def test_a_root_the_ratio_drops_makes_nothing() -> None:
    provider, exported = provider_with(ParentBasedTraceIdRatio(0.0))
    tracing.use(provider)
    try:
        with tracing.span("fire") as made, tracing.span("inner") as inner:
            assert made is None and inner is None and tracing.traceparent() is None
        unsampled = PARENT[:-2] + "00"
        with tracing.span("serve", parent=unsampled) as made:
            assert made is None
        assert exported.get_finished_spans() == ()
    finally:
        tracing.reset()


def test_a_new_root_carries_the_random_trace_id_flag_as_the_sdk_does(recorded: InMemorySpanExporter) -> None:
    sdk = TracerProvider().get_tracer("sdk").start_span("root").get_span_context().trace_flags
    with tracing.span("root") as made:
        assert made.get_span_context().trace_flags == sdk
