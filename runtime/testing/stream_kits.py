"""Test a view or a consumer in a line or two: given events, then the rows, or the commands sent.

The companions of `EntityTestKit`, with no NATS, no store and no runtime. Events go
through what the runners do with them — encoded with their entity's codec, decoded
by the subscriber's handler table (names, versions, upcasters), handed to the same
`@on` handlers — and each view row is stored encoded, one transaction per event, so
a row that would not survive its JSON codec fails here first, and a change made to a
row without `put` is lost here as it would be in production.

```python
view = ViewTestKit(PostsByAuthor).given(Published("ann", "hi"), entity_id="p1")
assert view.get("ann") == AuthorPosts("ann", 1, "p1")

kit = ConsumerTestKit(CountPosts)
assert kit.given(Published("ann", "hi"), entity_id="p1") == [
    SentCommand("profile", "ann", "count_post", {"post_id": "p1"}, command_id="post/p1/1")
]
```
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import msgspec

from ..model.entity import EntityModel, EventSourcedEntity, model_of
from ..model.envelope import Envelope
from ..model.errors import ConfigError
from ..streams.consumer import Consumer, Context
from ..streams.handlers import HandlerTable, Subscriber
from ..streams.view import Rows, View
from ..wire.protocol import Reply
from .entity_kit import _run_sync

if TYPE_CHECKING:
    from ..engine.runtime import Runtime

R = TypeVar("R")

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class _Meta:
    """What an envelope may carry besides its event: set on `kit.envelope(...)`."""

    correlation_id: str | None = None
    command_id: str | None = None
    recorded_at: int | None = None  # unix ns; now if None


class _Feed:
    """Turns events into envelopes as a journal would: seq per entity, position per journal."""

    def __init__(self, subscriber: type[Subscriber]) -> None:
        self.table: HandlerTable = subscriber.table()
        self.owner = subscriber.__name__
        self.seqs: dict[tuple[str, str], int] = {}
        self.position = 0

    def _model_of(self, event: msgspec.Struct) -> EntityModel:
        found = [m for m in self.table.sources.values() if type(event) in m.codec.classes]
        if len(found) != 1:
            sources = sorted(self.table.sources)
            why = "is not an event of any of its sources" if not found else "belongs to more than one source"
            raise ConfigError(f"{self.owner}: {type(event).__name__} {why} {sources}; pass an Envelope")
        return found[0]

    def envelope(self, event: msgspec.Struct, entity_id: str, meta: _Meta) -> Envelope:
        """The envelope the journal would store for `event` as the next event of `entity_id`."""
        model = self._model_of(event)
        spec = model.codec.spec(event)
        key = (model.type_name, entity_id)
        seq = self.seqs[key] = self.seqs.get(key, 0) + 1
        self.position += 1
        return Envelope(
            entity_type=model.type_name,
            entity_id=entity_id,
            seq=seq,
            name=spec.name,
            version=spec.version,
            payload=model.codec.encode(event),
            recorded_at=time.time_ns() if meta.recorded_at is None else meta.recorded_at,
            position=self.position,
            command_id=meta.command_id,
            correlation_id=meta.correlation_id,
        )

    def envelopes(self, items: tuple[msgspec.Struct | Envelope, ...], entity_id: str) -> list[Envelope]:
        out = []
        for item in items:
            if isinstance(item, Envelope):
                if item.entity_type not in self.table.sources:
                    raise ConfigError(
                        f"{self.owner} does not follow {item.entity_type!r}; its sources: {sorted(self.table.sources)}"
                    )
                self.position = max(self.position, item.position)
                out.append(item)
            else:
                out.append(self.envelope(item, entity_id, _Meta()))
        return out


class _Fed:
    """What both testkits share: events go in through a `_Feed`."""

    _feed: _Feed

    def envelope(
        self,
        event: msgspec.Struct,
        *,
        entity_id: str = "test-1",
        correlation_id: str | None = None,
        command_id: str | None = None,
        recorded_at: int | None = None,
    ) -> Envelope:
        """The envelope of `event` as the next event of `entity_id`, with metadata, for `given`."""
        return self._feed.envelope(event, entity_id, _Meta(correlation_id, command_id, recorded_at))


class ViewTestKit(_Fed, Generic[R]):
    """Applies events to one view's rows in memory, with no I/O: given events, then get or scan the rows."""

    def __init__(self, view: type[View[R]]) -> None:
        self.view = view
        self._feed = _Feed(view)
        self._instance = view()
        self._decoder: msgspec.json.Decoder[R] = msgspec.json.Decoder(view.row_type)
        self._rows: dict[str, bytes] = {}  # encoded, as a store keeps them
        self.applied = 0  # events a handler ran for

    def given(self, *events: msgspec.Struct | Envelope, entity_id: str = "test-1") -> ViewTestKit[R]:
        """Apply these events in order (bare events are the next ones of `entity_id`); one transaction each."""
        for env in self._feed.envelopes(events, entity_id):
            found = self._feed.table.decode(env)
            if found is None:
                continue  # an event this view does not handle, as in the runner
            event, handler = found
            rows: Rows[R] = Rows(self._rows, self._decoder, _json)
            args = (self._instance, rows, event, env) if handler.wants_envelope else (self._instance, rows, event)
            handler.fn(*args)
            writes = rows.writes()
            for data in writes.values():
                if data is not None:
                    self._decoder.decode(data)  # fails here, storing nothing, if a row does not survive its codec
            for key, data in writes.items():
                if data is None:
                    self._rows.pop(key, None)
                else:
                    self._rows[key] = data
            self.applied += 1
        return self

    def get(self, key: str) -> R | None:
        """The row stored under `key`, decoded as a query would."""
        data = self._rows.get(key)
        return None if data is None else self._decoder.decode(data)

    def scan(self, *, after: str = "", limit: int = 100) -> list[tuple[str, R]]:
        """Rows in key order after `after`, as `ViewQuery.scan` pages them."""
        keys = sorted(k for k in self._rows if k > after)[:limit]
        return [(k, self._decoder.decode(self._rows[k])) for k in keys]

    @property
    def rows(self) -> dict[str, R]:
        """Every row, by key."""
        return {k: self._decoder.decode(v) for k, v in sorted(self._rows.items())}


@dataclass(frozen=True, eq=False)
class SentCommand:
    """One command a consumer sent: where, what, and the ids the runtime would attach to it.

    `args` is the JSON object the target would decode (a Struct argument becomes its dict).
    Two SentCommands compare equal when their fields do, except that an id left out (None)
    matches any: an expected one may name only what the test is about.
    """

    entity_type: str
    entity_id: str
    command: str
    args: dict[str, Any]
    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SentCommand):
            return NotImplemented
        ids = ("command_id", "correlation_id", "causation_id")
        if (self.entity_type, self.entity_id, self.command, self.args) != (
            other.entity_type,
            other.entity_id,
            other.command,
            other.args,
        ):
            return False
        return all(a is None or b is None or a == b for a, b in ((getattr(self, n), getattr(other, n)) for n in ids))

    __hash__ = None  # type: ignore[assignment]  # equality with wildcards cannot be hashed


Responder = Callable[[SentCommand], Any]
"""Answers a sent command in a ConsumerTestKit: returns the reply's result, or raises (a CommandError)."""


class _RecordingContext(Context):
    """A handler's `ctx` that records each command instead of asking a runtime."""

    def __init__(self, kit: ConsumerTestKit, envelope: Envelope) -> None:
        super().__init__(cast("Runtime", None), envelope)  # never asked: `send` is replaced below
        self._kit = kit

    async def send(
        self, entity_type: str, entity_id: str, command: str, args: Mapping[str, Any] | msgspec.Struct | None = None
    ) -> Reply:
        command_id, correlation_id, causation_id = self.next_ids(entity_type, entity_id)
        decoded = msgspec.json.decode(_json.encode(args if args is not None else {}))
        if not isinstance(decoded, dict):
            raise TypeError(f"command arguments must encode to a JSON object, got {type(decoded).__name__}")
        sent = SentCommand(entity_type, entity_id, command, decoded, command_id, correlation_id, causation_id)
        self._kit.sent.append(sent)
        self._kit.check(sent)
        return Reply(self._kit.respond(sent), 0)


class ConsumerTestKit(_Fed):
    """Runs one consumer's handlers in memory, with no I/O: given events, then the commands it sent.

    `respond(sent)` answers each command (default: a reply with result None); raise from it to
    see how the handler copes with a rejection. With `targets=[Profile, ...]` each command to
    one of those types is first checked as the runtime checks it (its command exists, its
    arguments decode), and refused with the same error if not; commands to other types are
    not checked. A handler that raises fails `given` with that error, where the runner would
    retry the event and then park it on the dead-letter subject.
    """

    def __init__(
        self,
        consumer: type[Consumer],
        *,
        respond: Responder | None = None,
        targets: Iterable[type[EventSourcedEntity[Any]]] = (),
    ) -> None:
        self.consumer = consumer
        self.respond: Responder = respond or (lambda _: None)
        self.targets: dict[str, EntityModel] = {m.type_name: m for m in map(model_of, targets)}
        self._feed = _Feed(consumer)
        self._instance = consumer()
        self.sent: list[SentCommand] = []  # every command so far, in order

    def check(self, sent: SentCommand) -> None:
        """Refuse a command to a target type as the runtime would: unknown command, or `invalid` arguments."""
        model = self.targets.get(sent.entity_type)
        if model is not None:
            model.decode_args(model.command_spec(sent.command), sent.args)

    def given(self, *events: msgspec.Struct | Envelope, entity_id: str = "test-1") -> list[SentCommand]:
        """Handle these events in order; returns the commands they sent (handlers that await only `ctx.send`)."""
        start = len(self.sent)
        for result in self._handle(events, entity_id):
            if inspect.iscoroutine(result):
                _run_sync(result, instead="given_async")
        return self.sent[start:]

    async def given_async(self, *events: msgspec.Struct | Envelope, entity_id: str = "test-1") -> list[SentCommand]:
        """`given` for handlers that await something real besides `ctx.send`."""
        start = len(self.sent)
        for result in self._handle(events, entity_id):
            if inspect.isawaitable(result):
                await result
        return self.sent[start:]

    def _handle(self, events: tuple[msgspec.Struct | Envelope, ...], entity_id: str) -> Iterator[Any]:
        """Call each event's handler in turn, yielding what it returned (a coroutine if it is async)."""
        for env in self._feed.envelopes(events, entity_id):
            found = self._feed.table.decode(env)
            if found is None:
                continue  # an event this consumer does not handle, as in the runner
            event, handler = found
            ctx = _RecordingContext(self, env)
            yield (
                handler.fn(self._instance, ctx, event, env)
                if handler.wants_envelope
                else handler.fn(self._instance, ctx, event)
            )
