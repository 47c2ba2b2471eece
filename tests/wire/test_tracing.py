"""runtime/wire/tracing.py: nothing is made while no SDK provider is in use; spans and their
traceparent once one is; the OTEL_* variables that ask `memoir run` for traces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.wire import tracing
from runtime.wire.protocol import trace_id

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracing.use(provider)
    yield exported
    tracing.reset()


def test_off_is_one_shared_no_op() -> None:
    tracing.use(None)
    try:
        assert tracing.span("a") is tracing.span("b", kind=tracing.SERVER, parent=PARENT)
        with tracing.span("a") as current:
            assert current is None and tracing.traceparent() is None
        tracing.set_outcome(None, "rejected")
    finally:
        tracing.reset()


def test_spans_continue_a_traceparent_and_hand_theirs_on(exporter: InMemorySpanExporter) -> None:
    with tracing.span("serve", kind=tracing.SERVER, parent=PARENT, attributes={"a": 1}) as outer:
        handed = tracing.traceparent()
        with tracing.span("turn"):
            pass
        tracing.set_outcome(outer, "rejected")
    turn, serve = exporter.get_finished_spans()
    assert serve.context is not None and turn.parent is not None and serve.parent is not None
    assert f"{serve.context.trace_id:032x}" == trace_id(PARENT)
    assert f"{serve.parent.span_id:016x}" == PARENT.split("-")[2]
    assert turn.parent.span_id == serve.context.span_id
    assert handed is not None and handed.split("-")[2] == f"{serve.context.span_id:016x}"
    assert serve.attributes == {"a": 1, "memoir.outcome": "rejected"}
    assert serve.status.status_code.name == "ERROR"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_only_the_otel_variables_that_ask_for_traces_install_the_sdk(env: dict[str, str]) -> None:
    assert tracing.configure_from_env(env) is False
    tracing.reset()


def test_a_provider_in_use_is_kept(exporter: InMemorySpanExporter) -> None:
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "otlp"}) is False
    assert tracing.tracer() is not None


def test_an_events_reactions_are_sampled_as_its_command_was() -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    for ratio, flag in ((0.0, "00"), (1.0, "01")):
        tracing.use(TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio))))
        try:
            parent = tracing.event_parent(trace, "post/p1/1")
            assert parent == f"00-{trace}-{tracing.event_span_id('post/p1/1')}-{flag}"
            assert (tracing.event_link(trace, "post/p1/1") is None) == (flag == "00")
            assert tracing.recorded(trace) == (flag == "01")  # the view's fast path takes the others
            assert tracing.event_parent("not-a-trace-id", "post/p1/1") is None
            assert not tracing.recorded("not-a-trace-id") and not tracing.recorded(None)
        finally:
            tracing.reset()


def test_events_of_a_ratio_sampled_trace_are_recorded_by_their_trace_id() -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    tracing.use(None)
    assert not tracing.recorded("4bf92f3577b34da6a3ce929d0e0e4736")  # off
    tracing.use(TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5))))
    try:  # the ratio sampler's rule: the trace id's low 64 bits under half their range
        assert tracing.recorded("4bf92f3577b34da60000000000000001")
        assert not tracing.recorded("4bf92f3577b34da6ffffffffffffffff")
    finally:
        tracing.reset()


def test_sampling_is_decided_before_any_span_is_made() -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    tracing.use(None)
    assert tracing.sampled(PARENT) is None and tracing.sampled(None) is None  # off
    unsampled = PARENT[:-2] + "00"
    for ratio in (0.0, 1.0):
        exported = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        provider.add_span_processor(SimpleSpanProcessor(exported))
        tracing.use(provider)
        try:
            # a remote parent decides by its flag, whatever the ratio
            assert tracing.sampled(PARENT) == int(PARENT.split("-")[1], 16)
            assert tracing.sampled(unsampled) is None
            # a root, or a parent that is not one (bad, zero ids): the ratio decides, on a trace id drawn here
            for parent in (None, "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01"):
                root = tracing.sampled(parent)
                assert (root is None) == (ratio == 0.0)
            if ratio == 1.0:
                # a root's trace id is the one drawn, even under a current span
                with tracing.span("outer"), tracing.span("serve", kind=tracing.SERVER, trace_id=root or 0):
                    pass
                serve, _ = exported.get_finished_spans()
                assert serve.context is not None and serve.context.trace_id == root and serve.parent is None
        finally:
            tracing.reset()


def test_traceparent_is_written_as_the_w3c_propagator_writes_it(exporter: InMemorySpanExporter) -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    with tracing.span("serve", parent=PARENT):
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        assert tracing.traceparent() == carrier["traceparent"]
