"""Memoir's own recording spans, handed to the SDK's span processors when they end.

The SDK's tracer makes a span through a sampler call, a `SamplingResult`, a bounded attribute
map with its lock, a span limits check per attribute and link, and a `ReadableSpan` copy at the
end: about 28 µs per span on this project's machines, most of a traced command's overhead.
Memoir's spans have a handful of attributes it writes itself, and Memoir already decides
sampling before it makes a span (`tracing.sampled`), so a `Recording` is a `ReadableSpan` that
sets its few fields directly, takes the API's span methods while it runs, and is handed itself
to the tracer's span processors when it ends: the processors and exporters the SDK was
configured with (`OTEL_*`, or an embedding program's own) receive the same finished spans as
before, for a fraction of the cost.

`Recorder.of` accepts only a tracer whose sampling it models exactly: the SDK's default and
every `parentbased_*` sampler of `OTEL_TRACES_SAMPLER` (a parent's sampled flag decides; a root
is always, never, or by the trace id's ratio), with the SDK's random ids. For any other sampler
or id generator `tracing` makes the SDK's own spans, as it did before.

A recording is the current OpenTelemetry span while its block runs, so spans that instrumented
libraries make inside it (an HTTP client in a consumer) are its children. Processors see
`on_start` and `on_end` as from the SDK's spans.
"""

from __future__ import annotations

import functools
import random
import traceback
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import SimpleNamespace
from typing import Any


def _readable_span() -> Any:
    """The SDK's ReadableSpan, which a recording is; `object` without the `otel` extra (then no SDK
    tracer is installed, and no recording is ever made)."""
    try:
        from opentelemetry.sdk.trace import ReadableSpan
    except ImportError:
        return object
    return ReadableSpan


_VALUES = (str, bool, int, float)


@functools.cache
def _otel() -> Any:
    """The OpenTelemetry names a recording uses, imported once (the `otel` extra is optional; a
    recorder is only made for an SDK tracer, so they are there when this is called)."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.trace.sampling import Decision, ParentBased, StaticSampler, TraceIdRatioBased

    trace.Span.register(Recording)  # a Span to the API (its context's current span), not a subclass
    return SimpleNamespace(
        attach=context.attach,
        detach=context.detach,
        set_span_in_context=trace.set_span_in_context,
        get_current_span=trace.get_current_span,
        SpanContext=trace.SpanContext,
        TraceFlags=trace.TraceFlags,
        Link=trace.Link,
        Status=trace.Status,
        StatusCode=trace.StatusCode,
        UNSET=trace.Status(trace.StatusCode.UNSET),
        SAMPLED=trace.TraceFlags.SAMPLED,
        RANDOM=getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0),  # W3C level 2; absent from older APIs
        Event=Event,
        RandomIdGenerator=RandomIdGenerator,
        Decision=Decision,
        ParentBased=ParentBased,
        StaticSampler=StaticSampler,
        TraceIdRatioBased=TraceIdRatioBased,
    )


class Recorder:
    """What a tracer's spans need from it, looked up once: its sampling rule for a root, its
    resource, scope and span processor."""

    def __init__(self, root: Callable[[int], bool], resource: Any, scope: Any, processor: Any) -> None:
        self.root_sampled = root
        self.resource = resource
        self.scope = scope
        self.processor = processor
        self._ending = getattr(processor, "_on_ending", None)  # the SDK's newer hook, where it has one
        api = _otel()
        self._flags = {  # a span's flags by whether its trace id is random (a root's is)
            True: api.TraceFlags(api.SAMPLED | api.RANDOM),
            False: api.TraceFlags(api.SAMPLED),
        }

    @classmethod
    def of(cls, tracer: Any, root: Callable[[int], bool]) -> Recorder | None:
        """A recorder for the SDK tracer `tracer` whose sampler decides a root by `root` (a trace
        id's rule, `tracing._root_rule`), or None if its sampler or id generator is one whose
        decisions a recording would not make exactly as the SDK's span would."""
        try:
            sampler, ids = tracer.sampler, tracer.id_generator
            resource, processor = tracer.resource, tracer.span_processor
            scope = getattr(tracer, "_instrumentation_scope", None)
        except AttributeError:
            return None
        if not _follows(sampler) or type(getattr(ids, "inner", ids)) is not _otel().RandomIdGenerator:
            return None
        if type(getattr(tracer, "_tracer_metrics", None)).__name__ not in ("NoneType", "NoOpTracerMetrics"):
            return None  # the SDK counts its spans (a meter provider was given to it): its spans do
        if not getattr(tracer, "_is_enabled", lambda: True)():
            return None  # a tracer configured off: the SDK's spans are non-recording
        made = cls(root, resource, scope, processor)
        return made if _reads_back(made) else None

    def start(
        self,
        name: str,
        kind: Any,
        parent: Any,
        attributes: Mapping[str, Any] | None,
        links: Sequence[Any] | None,
        trace_id: int,
    ) -> Recording | None:
        """A recording span named `name`, the child of `parent` (or of the current span when None);
        a root takes `trace_id` when one is given (drawn and sampled already) or draws its own.
        None when the parent-based rule drops it (a parent not sampled, a root the ratio leaves)."""
        api = _otel()
        if parent is None and not trace_id:
            found = api.get_current_span().get_span_context()
            if found.is_valid:
                parent = found
        if parent is not None:
            if not parent.trace_flags.sampled:
                return None
            trace_id, flags = parent.trace_id, self._flags[bool(parent.trace_flags & api.RANDOM)]
        else:
            if not trace_id:
                trace_id = random.getrandbits(128) or 1
                if not self.root_sampled(trace_id):
                    return None
            flags = self._flags[True]
        ctx = api.SpanContext(trace_id, random.getrandbits(64) or 1, False, flags)
        made = Recording(self, name, ctx, parent, kind, dict(attributes) if attributes else {}, links)
        self.processor.on_start(made, parent_context=None)
        return made


def _reads_back(recorder: Recorder) -> bool:
    """Whether ReadableSpan's properties read the fields a recording sets (the SDK's own layout,
    which a later SDK could change: then its spans are made instead)."""
    api = _otel()
    ctx = api.SpanContext(1, 2, False, api.TraceFlags(api.SAMPLED))
    made = Recording(recorder, "probe", ctx, None, "kind", {"a": 1}, None)
    made._end_time = 3
    try:
        read = (made.name, made.context, made.parent, made.kind, dict(made.attributes), made.events, made.links)
        more = (made.status, made.start_time, made.end_time, made.resource, made.instrumentation_scope)
    except AttributeError:
        return False
    return read == ("probe", ctx, None, "kind", {"a": 1}, (), ()) and more[1:] == (
        made._start_time,
        3,
        recorder.resource,
        recorder.scope,
    )


def _follows(sampler: Any) -> bool:
    """Whether a recording decides as `sampler` does: a parent-based one with the default
    delegates for parents (a parent's sampled flag decides) over a root sampler that reads the
    trace id alone (a ratio, ALWAYS_ON, ALWAYS_OFF)."""
    api = _otel()
    if not isinstance(sampler, api.ParentBased) or type(sampler).should_sample is not api.ParentBased.should_sample:
        return False  # (ParentBasedTraceIdRatio and the others of OTEL_TRACES_SAMPLER only choose the root)
    delegates = (
        (sampler._remote_parent_sampled, True),
        (sampler._remote_parent_not_sampled, False),
        (sampler._local_parent_sampled, True),
        (sampler._local_parent_not_sampled, False),
    )
    if any(not _static(d, sampled) for d, sampled in delegates):
        return False
    root = sampler._root
    return type(root) is api.TraceIdRatioBased or _static(root, True) or _static(root, False)


def _static(sampler: Any, sampled: bool) -> bool:
    """Whether `sampler` is the SDK's ALWAYS_ON (`sampled`) or ALWAYS_OFF."""
    api = _otel()
    decision = api.Decision.RECORD_AND_SAMPLE if sampled else api.Decision.DROP
    return type(sampler) is api.StaticSampler and sampler._decision is decision


class Recording(_readable_span()):  # type: ignore[misc]  # a base mypy cannot see: the extra is optional
    """A span while it runs, and the finished span the processors get: the current span of its
    block (a context manager; the API's `Span` by registration, `_otel`), then itself handed to
    `on_end`, as the `ReadableSpan` it is. Nothing changes it once ended, so no copy is made.
    Single-task, like the code it times: no lock."""

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        context: Any,
        parent: Any,
        kind: Any,
        attributes: dict[str, Any],
        links: Sequence[Any] | None,
    ) -> None:
        # ReadableSpan's fields, set here rather than through its __init__ (`Recorder.of` checks
        # that its properties read them back)
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._links = tuple(links) if links else ()
        self._events: list[Any] = []
        self._status = _otel().UNSET
        self._resource = recorder.resource
        self._instrumentation_scope = recorder.scope
        self._instrumentation_info = None
        self._start_time = time_ns()
        self._end_time: int | None = None

    def __repr__(self) -> str:
        return f"Recording({self._name!r})"

    # -- the block it times

    def __enter__(self) -> Recording:
        api = _otel()
        self._token = api.attach(api.set_span_in_context(self))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        api = _otel()
        api.detach(self._token)
        if isinstance(exc, Exception):  # as the SDK's `use_span`: not a cancellation
            self.record_exception(exc)
            self.set_status(api.Status(api.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.end()

    # -- the OpenTelemetry span API (`get_span_context` is ReadableSpan's)

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is not None:
            return
        if isinstance(value, list | tuple):
            value = tuple(value)
            if not all(isinstance(v, _VALUES) for v in value):
                return  # what the SDK drops (with a warning): not an attribute value
        elif not isinstance(value, _VALUES):
            return
        self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(_otel().Event(name, dict(attributes) if attributes else None, timestamp or time_ns()))

    def add_link(self, context: Any, attributes: Mapping[str, Any] | None = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links = (*self._links, _otel().Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Any, description: str | None = None) -> None:
        api = _otel()
        if self._end_time is not None or self._status.status_code is api.StatusCode.OK:
            return  # an OK status is final, as in the SDK
        if isinstance(status, api.StatusCode):
            status = api.Status(status, description)
        if status.status_code is not api.StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """The exception as an `exception` event, with the attributes the SDK gives it."""
        module, qualname = type(exception).__module__, type(exception).__qualname__
        recorded = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
            **(attributes or {}),
        }
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """Hand the finished span to the processors, once."""
        if self._end_time is not None:
            return
        self._end_time = end_time or time_ns()
        recorder = self._recorder
        if recorder._ending is not None:
            recorder._ending(self)
        recorder.processor.on_end(self)


__all__ = ["Recorder", "Recording"]
