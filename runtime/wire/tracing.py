"""OpenTelemetry spans, free when tracing is off.

Memoir never requires OpenTelemetry: the `otel` extra installs the API, the SDK and the OTLP
exporter. Spans are made only when a real (SDK) tracer provider is installed, which `memoir run`
does from the standard `OTEL_*` variables (`configure_from_env`) and an embedding program may do
itself. Whether one is, is looked up once, on the first span asked for (`reset` looks again):
with none, `span` hands back one shared no-op context manager and `traceparent` None, so a hot
path pays a function call and a global read.

With one, a request's door asks `sampled` before it makes anything: a remote parent's flags
decide (the parent-based sampler drops what its parent did not sample), and for a new root the
trace id is drawn here and given to the root sampler (a ratio sampler decides by the trace id
alone), then handed to the SDK for the span if it is kept. So a command that is not sampled
makes no span object at all, not even a non-recording one, and nothing of it is attached to
the context: at 1 % sampling, 99 % of commands take the untraced path.

Context crosses processes as a W3C `traceparent` header on NATS messages (`H_TRACEPARENT`),
parsed and written here directly (the SDK's propagator builds a context per call).

A recorded span is Memoir's own `spans.Recording` where the SDK tracer's sampler is one it
models exactly (the default and every `parentbased_*` one): a few attributes kept while it runs
and one `ReadableSpan` handed to the SDK's span processors at its end, a fraction of what the
SDK's span objects cost (about 28 µs each to make and end); with any other sampler the SDK
makes its spans itself. Around them this module adds little: an event's link is made without a
traceparent written and parsed, and `memoir run` exports with the SDK's OTLP/HTTP exporter
writing its protobuf itself (`otlp`: a few µs per span against the SDK encoder's ~19).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import re
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

from ..model.errors import ConfigError
from . import otlp
from .spans import Recorder

_UNKNOWN: Any = object()
_tracer: Any = _UNKNOWN  # an opentelemetry Tracer, None when off; looked up once
_root_sampled: Callable[[int], bool] | None = None  # the tracer's root decision for a trace id, when it can say
_ids: _TraceIds | None = None  # the tracer's id generator, to which a new root's trace id is handed
_records: Any = None  # a spans.Recorder for the tracer, when its sampler is one Memoir's spans follow
_OFF = contextlib.nullcontext()

SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = "server", "client", "producer", "consumer", "internal"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"([0-9a-e][0-9a-f])-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")  # version ff is invalid


def tracer() -> Any:
    """The tracer spans come from, or None when no SDK tracer provider is installed."""
    global _tracer
    if _tracer is _UNKNOWN:
        _install(_lookup())
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
    _install(None if provider is None else provider.get_tracer("memoir"))


def _lookup() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # the API alone: nothing would be recorded
    return provider.get_tracer("memoir")


class _TraceIds:
    """The SDK tracer's id generator, handed the trace id of the next root span ahead: the one the
    root sampler was asked about before any span was made (`sampled`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.next = 0

    def generate_trace_id(self) -> int:
        trace_id, self.next = self.next, 0
        return trace_id or int(self.inner.generate_trace_id())

    def __getattr__(self, name: str) -> Any:  # generate_span_id, is_trace_id_random, …
        return getattr(self.inner, name)


def _install(t: Any) -> None:
    """Use the tracer `t` (None: off), with what deciding before making a span needs from it."""
    global _tracer, _root_sampled, _ids, _records
    _tracer, _root_sampled, _ids, _records = t, None, None, None
    if t is None or not hasattr(t, "id_generator") or not hasattr(t, "sampler"):
        return  # not the SDK's tracer: every root is made, and its sampler decides then
    _ids = t.id_generator if isinstance(t.id_generator, _TraceIds) else _TraceIds(t.id_generator)
    t.id_generator = _ids
    _root_sampled = _root_rule(t.sampler)
    _records = Recorder.of(t, _root_sampled)


def _root_rule(sampler: Any) -> Callable[[int], bool]:
    """The sampler's decision for a new root with a given trace id, as cheap as it can be had: a
    ratio sampler's is one comparison (its own rule: the trace id's low 64 bits under its bound)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased

    root = getattr(sampler, "_root", sampler) if isinstance(sampler, ParentBased) else sampler
    if type(root) is TraceIdRatioBased:
        bound, low = root.bound, TraceIdRatioBased.TRACE_ID_LIMIT
        return lambda trace_id: trace_id & low < bound
    if root is ALWAYS_ON or root is ALWAYS_OFF:  # the same for every trace id
        return (lambda trace_id: True) if root is ALWAYS_ON else (lambda trace_id: False)
    return lambda trace_id: bool(sampler.should_sample(None, trace_id, "root").decision.is_sampled())


def sampled(parent: str | None) -> int | None:
    """Whether a request that arrived with `parent` (its traceparent; None: none) is recorded here,
    decided before any span object is made: None if not (or tracing is off); else the trace id of
    the span to make, passed to `span` with the same `parent`.

    A valid parent decides by its sampled flag (the parent-based sampler's rule: a remote parent
    not sampled is dropped). A new root's trace id is drawn here and put to the root sampler.
    """
    if tracer() is None:
        return None
    if parent is not None and (m := _TRACEPARENT.fullmatch(parent)) and (found := _valid(m)):
        return found if int(m[4], 16) & 1 else None
    if _root_sampled is None:
        return 0  # the SDK draws the trace id and decides when the span is made
    trace_id = random.getrandbits(128) or 1
    return trace_id if _root_sampled(trace_id) else None


def _valid(m: re.Match[str]) -> int:
    """The trace id of a parsed traceparent, 0 if it is not a valid parent (a zero trace or span id)."""
    trace_id = int(m[2], 16)
    return trace_id if trace_id and int(m[3], 16) else 0


def span(
    name: str,
    *,
    kind: str = INTERNAL,
    parent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    links: list[Any] | None = None,
    trace_id: int = 0,
) -> contextlib.AbstractContextManager[Any]:
    """A span named `name` around a block (the current one's child, or `parent`'s: a traceparent),
    linked to the span contexts in `links` (what `current()` gave). A root (no valid `parent`) takes
    `trace_id` when one is given (what `sampled` drew)."""
    t = tracer()
    if t is None or (parent is not None and parent.endswith("-00")):
        return _OFF  # off, or continuing a trace nobody records: nothing to make
    api = _api()
    if _records is not None:  # Memoir's own span; None (the no-op) when its parent-based rule drops it
        remote = None if parent is None else _remote(parent)
        made = _records.start(name, api.kinds[kind], remote, attributes, _links(api, links), trace_id)
        return _OFF if made is None else made
    context = None if parent is None else _parent_context(parent)
    if context is None and trace_id and _ids is not None:
        _ids.next = trace_id  # taken by this root, made just below
        context = api.Context()  # a root, whatever span is current
    made = t.start_span(name, context, api.kinds[kind], attributes, _links(api, links))
    return _Current(made, api)


class _Current:
    """A started span made the current one for a block, and ended after it: what the SDK's
    `start_as_current_span` does (an error status and the exception recorded when the block
    raises one), without the two generator-based context managers it nests for that."""

    __slots__ = ("_api", "_span", "_token")

    def __init__(self, span: Any, api: Any) -> None:
        self._span, self._api = span, api

    def __enter__(self) -> Any:
        self._token = self._api.attach(self._api.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        api, sp = self._api, self._span
        api.detach(self._token)
        if isinstance(exc, Exception) and sp.is_recording():  # as `use_span`: not a cancellation
            sp.record_exception(exc)
            sp.set_status(api.Status(api.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        sp.end()


def _links(api: Any, links: list[Any] | None) -> list[Any] | None:
    return [api.Link(c) for c in links] if links else None


def _remote(parent: str) -> Any:
    """The remote span context `parent` names (a W3C traceparent); None if it names none."""
    m = _TRACEPARENT.fullmatch(parent)
    if m is None or not (trace_id := _valid(m)):
        return None
    api = _api()
    return api.SpanContext(trace_id, int(m[3], 16), is_remote=True, trace_flags=api.TraceFlags(int(m[4], 16)))


def _parent_context(parent: str) -> Any:
    """A context holding the remote span `parent` names (a W3C traceparent); None if it names none."""
    remote = _remote(parent)
    return None if remote is None else _api().set_span_in_context(_api().NonRecordingSpan(remote))


def child(
    name: str, attributes: Mapping[str, Any] | None = None, links: list[Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """`span` only inside a recorded span (else the no-op): a part of a traced whole, never a root."""
    return _OFF if current() is None else span(name, attributes=attributes, links=links)


@functools.cache
def _api() -> Any:
    """The OpenTelemetry names the spans use, imported once (the package is optional)."""
    from opentelemetry.context import Context, attach, detach
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        get_current_span,
        set_span_in_context,
    )

    kinds = {k: SpanKind[k.upper()] for k in (SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL)}
    return SimpleNamespace(
        Context=Context,
        attach=attach,
        detach=detach,
        Link=Link,
        kinds=kinds,
        Status=Status,
        StatusCode=StatusCode,
        SpanContext=SpanContext,
        TraceFlags=TraceFlags,
        SAMPLED=TraceFlags(TraceFlags.SAMPLED),
        NonRecordingSpan=NonRecordingSpan,
        get_current_span=get_current_span,
        set_span_in_context=set_span_in_context,
    )


def current() -> Any:
    """The current span's context, to link to from elsewhere; None when off or outside a recorded span."""
    if tracer() is None:
        return None
    found = _api().get_current_span().get_span_context()
    return found if found.is_valid and found.trace_flags.sampled else None


def traceparent() -> str | None:
    """The current span as a W3C `traceparent`, for a message's headers; None when off or outside a
    recorded span (an unsampled command's reactions record nothing either). Written as the W3C
    propagator writes it."""
    found = current()
    if found is None:
        return None
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"


def recorded(correlation_id: str | None) -> bool:
    """Whether an event with this correlation id is in a trace this process records (its
    reactions make spans): at 1 % sampling, 99 % of events are not, and take the untraced path."""
    if correlation_id is None or tracer() is None or not _TRACE_ID.fullmatch(correlation_id):
        return False
    return _sampled(correlation_id)


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
    tracer()
    return True if _root_sampled is None else _root_sampled(int(trace_id, 16))


def reaction(name: str, correlation_id: str | None, key: str) -> contextlib.AbstractContextManager[Any]:
    """A consumer-kind span for handling the event `key`, in its command's trace; the no-op when
    that trace is not recorded (or the event has none): a reaction is never a trace's root."""
    if not recorded(correlation_id):  # before a traceparent is written for a span nobody records
        return _OFF
    return span(name, kind=CONSUMER, parent=event_parent(correlation_id, key), attributes={"memoir.event": key})


def event_link(correlation_id: str | None, key: str) -> Any:
    """A span context standing for the event `key` in its command's trace, to link to; or None.

    What `event_parent` names, made without writing and parsing a traceparent: a publish links to
    every event it sends."""
    if correlation_id is None or not recorded(correlation_id):
        return None
    trace_id = int(correlation_id, 16)
    if not trace_id:
        return None
    api = _api()
    span_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")  # event_span_id's, as a number
    return api.SpanContext(trace_id, span_id, is_remote=True, trace_flags=api.SAMPLED)


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
        from opentelemetry.exporter.otlp.proto.http import trace_exporter  # noqa: F401 - there, or say so
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(f"OTEL_* asks for traces but {exc.name} is missing: pip install 'memoir[otel]'") from None
    provider = TracerProvider()  # its resource and sampler from OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, …
    provider.add_span_processor(BatchSpanProcessor(otlp.exporter()))  # the SDK's exporter, with a cheaper encoder
    trace.set_tracer_provider(provider)
    reset()
    return True
