"""`@on`: event handlers of views and consumers, found by the event class in their signature.

Views and consumers subscribe to entity types (`sources=[Post]`); the event
classes they handle are those entities' events, so a stored event is decoded
with the source entity's own codec (names, versions, upcasters) before any
handler sees it.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgspec

from ..engine.keyring import KeyRing
from ..model.entity import EntityModel, EventSourcedEntity, model_of
from ..model.envelope import Envelope
from ..model.errors import ConfigError, SealError
from ..model.sealing import is_sealed
from ..model.timer_events import is_system
from ..wire.protocol import check_name

F = TypeVar("F", bound=Callable[..., Any])

_ON = "__memoir_on__"


def on(fn: F) -> F:
    """Mark a method `(self, target, event: SomeEvent[, envelope: Envelope])` as an event handler."""
    setattr(fn, _ON, True)
    return fn


@dataclass(frozen=True, slots=True)
class Handler:
    fn: Callable[..., Any]
    wants_envelope: bool
    is_async: bool


class HandlerTable:
    """The `@on` handlers of one view or consumer class, and the models of its sources."""

    def __init__(self, owner: type, kind: str, name: str, sources: Iterable[type[EventSourcedEntity[Any]]]) -> None:
        self.name = check_name(kind, name)
        self.sources: dict[str, EntityModel] = {m.type_name: m for m in map(model_of, sources)}
        if not self.sources:
            raise ConfigError(f"{kind} {name!r} has no sources: pass sources=[SomeEntity]")
        known = {cls for m in self.sources.values() for cls in m.codec.classes}
        self.handlers: dict[type, Handler] = {}
        for attr in dir(owner):
            fn = getattr(owner, attr, None)
            if not (callable(fn) and getattr(fn, _ON, False)):
                continue
            params = list(inspect.signature(fn).parameters.values())
            if len(params) not in (3, 4):
                raise ConfigError(f"{owner.__name__}.{attr} must take (self, target, event[, envelope])")
            hints = typing.get_type_hints(fn)
            event_cls = hints.get(params[2].name)
            # a key-value source's state events answer to `StateSet[S]`, `StateSet` and `StateDeleted`
            matched = [c for c in known if c is event_cls or event_cls in getattr(c, "__memoir_matches__", ())]
            if not matched:
                names = sorted(c.__name__ for c in known)
                raise ConfigError(
                    f"{owner.__name__}.{attr}: annotate the event with one of its sources' events: {names}"
                )
            for cls in matched:
                self.handlers[cls] = Handler(fn, len(params) == 4, inspect.iscoroutinefunction(fn))

    def decode(self, env: Envelope) -> tuple[msgspec.Struct, Handler] | None:
        """The event and its handler, or None if this table does not handle that event."""
        model = self.sources.get(env.entity_type)
        if model is None:
            return None
        if is_system(env.name) and not model.codec.knows(env.name):  # timers: the runtime's, not the entity's
            return None  # (`memoir.Forgotten`, which an encrypted entity's codec knows, goes to the handlers)
        event = model.codec.decode(env)
        handler = self.handlers.get(type(event))
        return None if handler is None else (event, handler)

    @staticmethod
    async def readable(env: Envelope, keys: KeyRing | None) -> Envelope | None:
        """The envelope with its payload opened; None when its entity was forgotten (nothing to read).

        A payload that does not open (tampered, moved) raises SealError naming the event.
        """
        if not is_sealed(env.payload):
            return env
        if keys is None:
            raise SealError(f"event {env.key} is sealed and this reader has no key ring")
        return await keys.open(env)

    @staticmethod
    async def call(handler: Handler, owner: Any, target: Any, event: msgspec.Struct, env: Envelope) -> None:
        args = (owner, target, event, env) if handler.wants_envelope else (owner, target, event)
        result = handler.fn(*args)
        if handler.is_async:
            await result


class Subscriber:
    """What views and consumers share: a name, the entity types they follow, their `@on` table.

    Subclass with `name="..."` and `sources=[EntityClass, ...]`.
    """

    name: ClassVar[str]
    sources: ClassVar[tuple[type[EventSourcedEntity[Any]], ...]]
    kind: ClassVar[str] = "subscriber"

    def __init_subclass__(
        cls, name: str | None = None, sources: Iterable[type[EventSourcedEntity[Any]]] = (), **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        cls.name = name or cls.__dict__.get("name") or cls.__name__.lower()
        cls.sources = tuple(sources) or cls.__dict__.get("sources", ())

    @classmethod
    def table(cls) -> HandlerTable:
        """The compiled handler table (built once; building validates the class)."""
        table = cls.__dict__.get("_table")
        if table is None:
            table = HandlerTable(cls, cls.kind, cls.name, cls.sources)
            cls.check(table)
            cls._table = table  # type: ignore[attr-defined]
        return table

    @classmethod
    def check(cls, table: HandlerTable) -> None:
        """A hook for subclasses to refuse a table (raise ConfigError)."""
