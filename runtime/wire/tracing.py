"""OpenTelemetry spans, free when tracing is off.

Memoir never requires OpenTelemetry: the `otel` extra installs the API, the SDK and the OTLP
exporter. Spans are made only when a real (SDK) tracer provider is installed, which `memoir run`
does from the standard `OTEL_*` variables (`configure_from_env`) and an embedding program may do
itself. Whether one is, is looked up once, on the first span asked for (`reset` looks again):
with none, `span` hands back one shared no-op context manager and `traceparent` None, so a hot
path pays a function call and a global read.

Context crosses processes as a W3C `traceparent` header on NATS messages (`H_TRACEPARENT`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from ..model.errors import ConfigError

_UNKNOWN: Any = object()
_tracer: Any = _UNKNOWN  # an opentelemetry Tracer, None when off; looked up once
_OFF = contextlib.nullcontext()

SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = "server", "client", "producer", "consumer", "internal"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def tracer() -> Any:
    """The tracer spans come from, or None when no SDK tracer provider is installed."""
    global _tracer
    if _tracer is _UNKNOWN:
        _tracer = _lookup()
    return _tracer


def reset() -> None:
    """Look the tracer provider up again on the next span (after installing one)."""
    global _tracer
    _tracer = _UNKNOWN


def use(provider: Any) -> None:
    """Make spans with `provider` (an SDK TracerProvider) rather than the global one; None: tracing off.

    For tests and programs that keep their provider to themselves. Parts that looked the tracer up
    already (a NATS door's workers, when they start) keep what they found.
    """
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("memoir")


def _lookup() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # the API alone: nothing would be recorded
    return provider.get_tracer("memoir")


def span(
    name: str,
    *,
    kind: str = INTERNAL,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    links: list[Any] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span named `name` around a block (the current one's child, or `parent`'s: a traceparent),
    linked to the span contexts in `links` (what `current()` gave)."""
    t = tracer()
    if t is None or (parent is not None and parent.endswith("-00")):
        return _OFF  # off, or continuing a trace nobody records: nothing to make
    api = _api()
    context = None if parent is None else _propagator().extract({"traceparent": parent})
    return t.start_as_current_span(  # type: ignore[no-any-return]
        name,
        context=context,
        kind=api.kinds[kind],
        attributes=attributes,
        links=[api.Link(c) for c in links] if links else None,
    )


def child(
    name: str, attributes: Mapping[str, Any] | None = None, links: list[Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """`span` only inside a recorded span (else the no-op): a part of a traced whole, never a root."""
    return _OFF if current() is None else span(name, attributes=attributes, links=links)


@functools.cache
def _api() -> Any:
    """The OpenTelemetry names the spans use, imported once (the package is optional)."""
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    kinds = {k: SpanKind[k.upper()] for k in (SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL)}
    return SimpleNamespace(Link=Link, kinds=kinds, Status=Status, StatusCode=StatusCode)


def current() -> Any:
    """The current span's context, to link to from elsewhere; None when off or outside a recorded span."""
    if tracer() is None:
        return None
    from opentelemetry import trace

    found = trace.get_current_span().get_span_context()
    return found if found.is_valid and found.trace_flags.sampled else None


def traceparent() -> str | None:
    """The current span as a W3C `traceparent`, for a message's headers; None when off or outside a
    recorded span (an unsampled command's reactions record nothing either)."""
    if current() is None:
        return None
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    return carrier.get("traceparent")


def event_parent(correlation_id: str | None, key: str) -> str | None:
    """The traceparent a reaction to an event continues: the trace its command was in, or None.

    An event keeps its command's correlation id, which is the trace id when the command came
    with a `traceparent` (or was traced where it arrived: the NATS door sets one). The parent
    span id is the event's own, derived from its key (`{type}/{id}/{seq}`): one per event, the
    same in every process that handles it.
    """
    if correlation_id is None or not _TRACE_ID.fullmatch(correlation_id):
        return None
    return f"00-{correlation_id}-{event_span_id(key)}-{'01' if _sampled(correlation_id) else '00'}"


def _sampled(trace_id: str) -> bool:
    """Whether this process's sampler samples the trace `trace_id` at its root: what the command's
    first member decided, with the same ratio (a ratio sampler decides by the trace id alone), so
    1 % of commands means 1 % of their reactions too, not all of them."""
    sampler = getattr(tracer(), "sampler", None)
    if sampler is None:
        return True
    from opentelemetry.sdk.trace.sampling import Decision

    return bool(sampler.should_sample(None, int(trace_id, 16), "event").decision == Decision.RECORD_AND_SAMPLE)


@functools.cache
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def reaction(name: str, correlation_id: str | None, key: str) -> contextlib.AbstractContextManager[Any]:
    """A consumer-kind span for handling the event `key`, in its command's trace; the no-op when
    that trace is not recorded (or the event has none): a reaction is never a trace's root."""
    parent = event_parent(correlation_id, key)
    if parent is None:
        return _OFF
    return span(name, kind=CONSUMER, parent=parent, attributes={"memoir.event": key})


def event_link(correlation_id: str | None, key: str) -> Any:
    """A span context standing for the event `key` in its command's trace, to link to; or None."""
    parent = event_parent(correlation_id, key)
    if parent is None or tracer() is None or parent.endswith("-00"):
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    _, trace, span, _ = parent.split("-")
    return SpanContext(int(trace, 16), int(span, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def event_span_id(key: str) -> str:
    """The span id that stands for the event `key` (16 hex digits); the turn that stored it lists
    its key in `memoir.events`, so a trace's reader can hang the reactions under that turn."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def set_outcome(current: Any, outcome: str) -> None:
    """Record a command's outcome code on its span (an error status unless `ok`)."""
    if current is None or not current.is_recording():
        return
    current.set_attribute("memoir.outcome", outcome)
    if outcome != "ok":
        api = _api()
        current.set_status(api.Status(api.StatusCode.ERROR, outcome))


def configure_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK with an OTLP exporter when the `OTEL_*` variables ask for traces.

    Asked for: `OTEL_TRACES_EXPORTER=otlp`, or an `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` with no
    exporter named; never with `OTEL_SDK_DISABLED=true` or a provider installed already. The SDK
    reads the rest itself (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER(_ARG)`, the exporter's
    endpoint, headers and timeouts). True if it installed one.
    """
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    wanted = exporter == "otlp" or (not exporter and bool(endpoint))
    if not wanted or env.get("OTEL_SDK_DISABLED", "").lower() == "true" or tracer() is not None:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(f"OTEL_* asks for traces but {exc.name} is missing: pip install 'memoir[otel]'") from None
    provider = TracerProvider()  # its resource and sampler from OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, …
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    reset()
    return True
