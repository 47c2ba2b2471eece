"""Key-value entities: commands set or delete the whole state, with no events to design.

`KeyValueEntity` is the durable-state kind (the Akka SDK's Key Value Entity). Each
change is stored as one system event in the entity's own journal stream:
`memoir.StateSet` carrying the whole new state, or `memoir.StateDeleted`. That is the
choice, over a separate state table per journal, because it reuses everything an
event-sourced entity already has on every journal (memory, SQLite, PostgreSQL,
JetStream): the single-writer actor, the optimistic append on `seq`, command-id
dedupe with the first reply stored beside the change, encryption, cluster routing,
and the outbox to the type's stream, so a View or Consumer subscribes to a key-value
entity exactly as to an event-sourced one (`@on` a `StateSet[CartState]` or
`StateDeleted` handler).

Recovery is O(1) in the entity's history: a snapshot every 16 changes (`snapshot_every`,
off the command path) bounds what the journal hands back to the last snapshot and the few
changes after it, and of those only the newest is decoded (`EntityModel.last_wins`), never
a fold of past states. Not a snapshot on every change: the saver then competes with the
command path for the journal and, once behind, drops most of them (benchmarks/kv_entities.py
measures both against an event-sourced entity). A delete
stores `StateDeleted`: the state is `initial` again and the entity takes commands
afterwards (unlike an event-sourced tombstone).

Each key-value type gets its own subclasses of `StateSet` and `StateDeleted` (so the
state decodes to its type and two key-value sources of one view stay apart); handlers
name them through the generic `StateSet[CartState]` or the plain classes.
"""

# No `from __future__ import annotations` here: msgspec resolves `state: S` of the generated
# subclasses in their own (the user's) module, where `S` is not defined; a real TypeVar needs none.
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from .checks import persisted_classes
from .effect import Effect
from .entity import EventSourcedEntity
from .errors import ConfigError
from .events import event

S = TypeVar("S")

STATE_SET = "memoir.StateSet"
STATE_DELETED = "memoir.StateDeleted"

MATCHES = "__memoir_matches__"
"""On a generated event class: the handler annotations it answers to (see streams.handlers)."""


class StateSet(msgspec.Struct, Generic[S], frozen=True):
    """A key-value entity's whole new state, stored as `memoir.StateSet`."""

    state: S


class StateDeleted(msgspec.Struct, frozen=True):
    """A key-value entity's state deleted (back to `initial`), stored as `memoir.StateDeleted`."""


class KeyValueEntity(EventSourcedEntity[S]):
    """Base class of a key-value entity type: subclass with `name="..."` and set `initial`.

    Command handlers return `self.update(new_state)`, `self.delete()`, `self.reply(...)`
    or `self.error(...)`; `.reply(value_or_fn)` chains on the first two.
    """

    snapshot_every: ClassVar[int] = 16  # recovery reads at most ~16 stored states and decodes one
    durable_state: ClassVar[bool] = True
    _kv_events: ClassVar[tuple[type[StateSet[Any]], type[StateDeleted]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._kv_events = None  # made on first use, once the state type's forward references resolve

    @classmethod
    def state_events(cls) -> tuple[type[StateSet[Any]], type[StateDeleted]]:
        """This type's own `StateSet` and `StateDeleted` classes (made once)."""
        made: tuple[type[StateSet[Any]], type[StateDeleted]] | None = cls.__dict__.get("_kv_events")
        if made is None:
            made = cls._kv_events = _make_events(cls)
        return made

    @classmethod
    def state_set(cls, state: S) -> StateSet[S]:
        """The event that stores `state` (what `update` persists; for testkits' `given`)."""
        return cls.state_events()[0](state=state)

    @classmethod
    def state_deleted(cls) -> StateDeleted:
        """The event that deletes the state (what `delete` persists)."""
        return cls.state_events()[1]()

    def update(self, state: S) -> Effect[Any]:
        """Store `state` as the entity's whole state (replacing the previous one)."""
        return Effect((self.state_set(state),))

    def delete(self) -> Effect[Any]:  # type: ignore[override]
        """Delete the state: it is `initial` again, and the entity keeps taking commands."""
        return Effect((self.state_deleted(),))

    @staticmethod
    def persist(*events: msgspec.Struct) -> Effect[Any]:
        """Not for key-value entities: they store whole states (`self.update(state)`)."""
        raise TypeError("a KeyValueEntity stores whole states: return self.update(state) or self.delete()")

    @classmethod
    def system_appliers(cls) -> dict[type, Callable[[Any, Any, Any], Any]]:
        """How the two state events change the state (the compiled model adds them)."""
        set_cls, deleted_cls = cls.state_events()
        initial = cls.initial
        return {set_cls: _take, deleted_cls: lambda entity, state, e: initial}


def _take(entity: Any, state: Any, e: StateSet[Any]) -> Any:
    return e.state


def _declared(cls: type) -> Any:
    """X in `class C(KeyValueEntity[X])`, or None if the class does not say."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            if args and typing.get_origin(base) is KeyValueEntity and not isinstance(args[0], TypeVar):
                return args[0]
    return None


def _state_type(cls: type[KeyValueEntity[Any]]) -> Any:
    declared = _declared(cls)
    if isinstance(declared, (str, typing.ForwardRef)):
        name = declared if isinstance(declared, str) else declared.__forward_arg__
        try:
            declared = eval(name, vars(sys.modules[cls.__module__]))  # as typing.get_type_hints evaluates it
        except Exception as exc:
            raise ConfigError(f"{cls.__name__}: cannot resolve its state type {name!r}: {exc}") from exc
    if declared is None:
        return type(cls.initial)
    if isinstance(declared, type) and not isinstance(cls.initial, declared):
        raise ConfigError(f"{cls.__name__}.initial is {type(cls.initial).__name__}, not {declared.__name__}")
    return declared


def _make_events(cls: type[KeyValueEntity[Any]]) -> tuple[type[StateSet[Any]], type[StateDeleted]]:
    if not hasattr(cls, "initial"):
        raise ConfigError(f"{cls.__name__} has no `initial` state")
    if cls.initial is None:
        raise ConfigError(f"{cls.__name__}.initial is None: give the empty state (e.g. {cls.__name__}State())")
    for attr in dir(cls):
        fn = getattr(cls, attr, None)
        if getattr(fn, "__memoir_applies__", False):
            raise ConfigError(f"{cls.__name__}.{attr}: a KeyValueEntity has no @applies methods (it stores states)")
        if callable(fn) and getattr(fn, "__memoir_command__", None) and any(True for _ in persisted_classes(fn)):
            raise ConfigError(
                f"{cls.__name__}.{attr} persists events: a KeyValueEntity stores whole states"
                " (return self.update(state) or self.delete())"
            )
    state_type = _state_type(cls)
    generic = StateSet[state_type]  # type: ignore[valid-type]
    set_cls = types.new_class(f"{cls.__name__}StateSet", (generic,), {"frozen": True})
    deleted_cls = types.new_class(f"{cls.__name__}StateDeleted", (StateDeleted,), {"frozen": True})
    for made, base, matches in (
        (set_cls, STATE_SET, (StateSet, generic)),
        (deleted_cls, STATE_DELETED, (StateDeleted,)),
    ):
        made.__module__ = cls.__module__
        made.__qualname__ = f"{cls.__qualname__}.{made.__name__}"
        setattr(made, MATCHES, matches)
        event(made, name=base)
    return set_cls, deleted_cls
