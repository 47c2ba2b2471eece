"""The entity API: `EventSourcedEntity`, `@command` and `@applies`.

A class describes one entity type. It is compiled once into an `EntityModel`:
the command table with an msgspec argument type built from each handler's
signature (so a payload is decoded and validated in one step, with errors that
name the field), the event-handler table, and the event codec. The actor, the
testkit and the CLI all run entities through the same model.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from . import effect as _effect
from .effect import Effect
from .errors import CommandError, ConfigError, ErrorCode
from .events import EventCodec

S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])

_COMMAND = "__memoir_command__"
_APPLIES = "__memoir_applies__"


def command(fn: F | None = None, *, name: str | None = None) -> Any:
    """Mark a method `(self, state, **args) -> Effect[R]` (sync or async) as a command handler."""

    def mark(f: F) -> F:
        setattr(f, _COMMAND, name or f.__name__)
        return f

    return mark if fn is None else mark(fn)


def applies(fn: F) -> F:
    """Mark a pure method `(self, state, event) -> state`: how one event type changes the state."""
    setattr(fn, _APPLIES, True)
    return fn


class EventSourcedEntity(Generic[S]):
    """Base class of an entity type. Subclass with `name="..."` and set `initial`.

    One instance exists per live entity, so handlers can read `self.entity_id`;
    the state is passed in explicitly because it belongs to the runtime, which
    replaces it only after the events that produce it are durable.
    """

    type_name: ClassVar[str]
    initial: ClassVar[Any]
    snapshot_every: ClassVar[int] = 100  # 0 turns snapshots off
    entity_id: str

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Compiled on first use (model_of), once forward references in annotations resolve.
        cls.type_name = name or cls.__dict__.get("type_name") or cls.__name__.lower()

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    # The effect vocabulary, as methods so handlers read `return self.persist(...)`.
    @staticmethod
    def persist(*events: msgspec.Struct) -> Effect[Any]:
        """Store these events atomically (all or none), then apply them."""
        return _effect.persist(*events)

    @staticmethod
    def reply(value: Any) -> Effect[Any]:
        """Persist nothing and answer `value`."""
        return _effect.reply(value)

    @staticmethod
    def error(message: str, code: ErrorCode | str = ErrorCode.REJECTED, details: Any = None) -> Effect[Any]:
        """Refuse the command: nothing is persisted and the caller gets this error."""
        return _effect.error(message, code, details)

    @staticmethod
    def delete() -> Effect[Any]:
        """Delete the entity (a tombstone): its events and snapshots go; its seq is never reused."""
        return _effect.delete()


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    handler: Callable[..., Any]
    args_type: type[msgspec.Struct]
    decoder: msgspec.json.Decoder[Any]
    reply_type: Any
    is_async: bool


def _reply_type(hint: Any) -> Any:
    if typing.get_origin(hint) is Effect:
        (arg,) = typing.get_args(hint)
        return arg
    return Any


def _hints(fn: Callable[..., Any], owner: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=False)
    except Exception as exc:  # a NameError from a forward reference, usually
        raise ConfigError(f"{owner.__name__}.{fn.__name__}: cannot resolve type hints: {exc}") from exc


def _describe(exc: Exception, payload: object) -> str:
    """msgspec's message, except that bytes which are not UTF-8 are called that, not 'malformed JSON'."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            bytes(payload).decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"payload is not valid UTF-8 (byte {bad.start})"
    if not isinstance(exc, msgspec.ValidationError):  # ValidationError subclasses DecodeError
        return f"payload is not valid JSON: {exc}"
    return str(exc)


class EntityModel:
    """An entity class compiled for the runtime: command table, event table, codecs."""

    def __init__(self, cls: type[EventSourcedEntity[Any]]) -> None:
        if not hasattr(cls, "initial"):
            raise ConfigError(f"{cls.__name__} has no `initial` state")
        self.cls = cls
        self.type_name: str = cls.type_name
        self.initial: Any = cls.initial
        self.state_type: Any = type(cls.initial)
        self.snapshot_every: int = int(cls.snapshot_every)
        self.commands: dict[str, CommandSpec] = {}
        self.appliers: dict[type, Callable[[Any, Any, Any], Any]] = {}
        for attr in dir(cls):
            fn = getattr(cls, attr, None)
            if callable(fn) and hasattr(fn, _COMMAND):
                self._add_command(getattr(fn, _COMMAND), fn)
            elif callable(fn) and getattr(fn, _APPLIES, False):
                self._add_applier(fn)
        self.codec = EventCodec(self.appliers)
        self.state_encoder = msgspec.json.Encoder()
        self.state_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.state_type)

    def _add_command(self, name: str, fn: Callable[..., Any]) -> None:
        if name in self.commands:
            raise ConfigError(f"{self.cls.__name__}: two handlers for command {name!r}")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) < 2:
            raise ConfigError(f"{self.cls.__name__}.{fn.__name__} must take (self, state, ...)")
        hints = _hints(fn, self.cls)
        fields: list[tuple[Any, ...]] = []
        for p in params[2:]:
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                raise ConfigError(f"{self.cls.__name__}.{fn.__name__}: *args/**kwargs are not command arguments")
            tp = hints.get(p.name, Any)
            fields.append((p.name, tp) if p.default is p.empty else (p.name, tp, p.default))
        args_type = msgspec.defstruct(f"{self.type_name}.{name}", fields, forbid_unknown_fields=True, kw_only=True)
        self.commands[name] = CommandSpec(
            name=name,
            handler=fn,
            args_type=args_type,
            decoder=msgspec.json.Decoder(args_type),
            reply_type=_reply_type(hints.get("return", Any)),
            is_async=inspect.iscoroutinefunction(fn),
        )

    def _add_applier(self, fn: Callable[..., Any]) -> None:
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 3:
            raise ConfigError(f"{self.cls.__name__}.{fn.__name__} must take (self, state, event)")
        event_cls = _hints(fn, self.cls).get(params[2].name)
        if not (isinstance(event_cls, type) and issubclass(event_cls, msgspec.Struct)):
            raise ConfigError(
                f"{self.cls.__name__}.{fn.__name__}: annotate the event parameter with its msgspec.Struct class"
            )
        if event_cls in self.appliers:
            raise ConfigError(f"{self.cls.__name__}: two @applies handlers for {event_cls.__name__}")
        self.appliers[event_cls] = fn

    # -- the pieces of a turn ------------------------------------------------------------

    def command_spec(self, name: str) -> CommandSpec:
        spec = self.commands.get(name)
        if spec is None:
            known = ", ".join(sorted(self.commands)) or "none"
            raise CommandError(
                ErrorCode.UNKNOWN_COMMAND,
                f"entity type {self.type_name!r} has no command {name!r} (known: {known})",
            )
        return spec

    def decode_args(self, spec: CommandSpec, args: bytes | Mapping[str, Any] | msgspec.Struct | None) -> Any:
        """Validate a command's arguments; a bad payload raises `invalid` naming the field."""
        try:
            if args is None or args == b"":
                return spec.decoder.decode(b"{}")
            if isinstance(args, (bytes, bytearray, memoryview)):
                return spec.decoder.decode(args)
            if isinstance(args, spec.args_type):
                return args
            if not isinstance(args, Mapping):
                raise msgspec.ValidationError(f"Expected `object`, got `{type(args).__name__}`")
            return msgspec.convert(args, spec.args_type, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise CommandError(
                ErrorCode.INVALID, f"{self.type_name}.{spec.name}: {_describe(exc, args)}", {"command": spec.name}
            ) from None

    def decide(self, entity: EventSourcedEntity[Any], state: Any, spec: CommandSpec, args: Any) -> Any:
        """Call the handler: an Effect, or an awaitable of one for an async handler."""
        return spec.handler(entity, state, **msgspec.structs.asdict(args))

    def fold(self, entity: EventSourcedEntity[Any], state: Any, events: Iterable[msgspec.Struct]) -> Any:
        for event in events:
            state = self.apply(entity, state, event)
        return state

    def apply(self, entity: EventSourcedEntity[Any], state: Any, event: msgspec.Struct) -> Any:
        fn = self.appliers.get(type(event))
        if fn is None:
            raise ConfigError(f"{self.type_name}: no @applies handler for {type(event).__name__}")
        return fn(entity, state, event)

    def encode_reply(self, value: Any) -> bytes:
        return self.state_encoder.encode(value)

    def decode_reply(self, spec: CommandSpec, data: bytes) -> Any:
        return msgspec.json.decode(data, type=spec.reply_type, strict=False)


_models: dict[type, EntityModel] = {}


def model_of(cls: type[EventSourcedEntity[Any]]) -> EntityModel:
    """The compiled model of an entity class (cached; compiling validates the class)."""
    model = _models.get(cls)
    if model is None:
        if not (isinstance(cls, type) and issubclass(cls, EventSourcedEntity)):
            raise ConfigError(f"{cls!r} is not an EventSourcedEntity subclass")
        model = _models[cls] = EntityModel(cls)
    return model
