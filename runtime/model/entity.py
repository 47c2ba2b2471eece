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

from . import checks
from . import effect as _effect
from .access import Caller, rule
from .effect import Effect
from .errors import CommandError, ConfigError, ErrorCode, InternalError
from .events import EventCodec
from .sealing import Forgotten

S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])

_COMMAND = "__memoir_command__"
_APPLIES = "__memoir_applies__"
_ALLOW = "__memoir_allow__"


def command(fn: F | None = None, *, name: str | None = None, allow: Any = None) -> Any:
    """Mark a method `(self, state, **args) -> Effect[R]` (sync or async) as a command handler.

    `allow` is who may send it from outside (a rule of `runtime.model.access`, e.g.
    `Claim("role", "admin")`, or a callable over the verified `Caller`).
    """

    if allow is not None:
        rule(allow)  # a wrong rule fails where it is written, not at the first command

    def mark(f: F) -> F:
        setattr(f, _COMMAND, name or f.__name__)
        setattr(f, _ALLOW, allow)
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
    encrypted: ClassVar[bool] = False  # payloads sealed under a per-entity key, which `forget` destroys
    durable_state: ClassVar[bool] = False  # a KeyValueEntity: each event is a whole state, the last one wins
    entity_id: str
    # Who sent the command being handled (its verified token's subject and claims), set for the
    # duration of each handler call: ANONYMOUS (subject None) from outside without a token,
    # None for commands from inside the process (consumers, timers, code holding the Runtime).
    caller: Caller | None = None

    def __init_subclass__(cls, name: str | None = None, encrypted: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if encrypted is not None:
            cls.encrypted = encrypted
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

    @staticmethod
    def forget() -> Effect[Any]:
        """Forget an `encrypted=True` entity: destroy its data key, so its payloads are unreadable everywhere."""
        return _effect.forget()

    @classmethod
    def system_appliers(cls) -> dict[type, Callable[[Any, Any, Any], Any]]:
        """How the runtime's own events change the state (a key-value entity's state changes); none here."""
        return {}


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    handler: Callable[..., Any]
    args_type: type[msgspec.Struct]
    decoder: msgspec.json.Decoder[Any]
    reply_type: Any
    is_async: bool
    allow: Any = None  # the handler's `@command(allow=...)` rule, or None


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


def _whole(value: Any) -> Any:
    """`value` with every float that is a whole number made an int (`1.0` -> `1`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


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
        checks.check_initial(cls, cls.initial)
        self.cls = cls
        self.type_name: str = cls.type_name
        self.initial: Any = cls.initial
        self.state_type: Any = type(cls.initial)
        self.checks_state = cls.initial is not None  # an @applies result must be a state_type
        self.snapshot_every: int = int(cls.snapshot_every)
        self.encrypted: bool = bool(cls.encrypted)
        self.commands: dict[str, CommandSpec] = {}
        self.appliers: dict[type, Callable[[Any, Any, Any], Any]] = {}
        for attr in dir(cls):
            fn = getattr(cls, attr, None)
            if callable(fn) and hasattr(fn, _COMMAND):
                self._add_command(getattr(fn, _COMMAND), fn)
            elif callable(fn) and getattr(fn, _APPLIES, False):
                self._add_applier(fn)
        self.appliers.update(cls.system_appliers())
        for spec in self.commands.values():
            checks.check_persisted_events(cls, spec.handler, self.appliers)
        self.last_wins: bool = bool(cls.durable_state)
        """Each event is a whole state (a KeyValueEntity): recovery decodes only the newest."""
        if self.encrypted:  # its last event, once forgotten; it changes nothing in the state
            self.appliers.setdefault(Forgotten, _unchanged)
        self.codec = EventCodec(self.appliers)
        self.replayers: dict[str, tuple[int, Callable[[bytes], Any], Callable[[Any, Any, Any], Any]]] = {
            name: (version, decode, self.appliers[cls])
            for name, (cls, version, decode) in self.codec.decoders().items()
        }
        """Stored name -> (version, decoder, @applies): recovery folds an event at its current
        version in one lookup; anything else (an old version, a timer) takes `codec.decode`."""
        self.state_encoder = msgspec.json.Encoder()
        self.state_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.state_type)

    def _add_command(self, name: str, fn: Callable[..., Any]) -> None:
        if name in self.commands:
            raise ConfigError(f"{self.cls.__name__}: two handlers for command {name!r}")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) < 2:
            raise ConfigError(f"{self.cls.__name__}.{fn.__name__} must take (self, state, ...)")
        hints = _hints(fn, self.cls)
        checks.check_command(self.cls, fn, hints, self.initial)
        constrained = typing.get_type_hints(fn, include_extras=True)  # Annotated[int, Meta(gt=0)]: decoder and schema
        fields: list[tuple[Any, ...]] = []
        for p in params[2:]:
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                raise ConfigError(f"{self.cls.__name__}.{fn.__name__}: *args/**kwargs are not command arguments")
            tp = constrained.get(p.name, Any)
            fields.append((p.name, tp) if p.default is p.empty else (p.name, tp, p.default))
        args_type = msgspec.defstruct(f"{self.type_name}.{name}", fields, forbid_unknown_fields=True, kw_only=True)
        self.commands[name] = CommandSpec(
            name=name,
            handler=fn,
            args_type=args_type,
            decoder=msgspec.json.Decoder(args_type),
            reply_type=_reply_type(hints.get("return", Any)),
            is_async=inspect.iscoroutinefunction(fn),
            allow=getattr(fn, _ALLOW, None),
        )

    def _add_applier(self, fn: Callable[..., Any]) -> None:
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 3:
            raise ConfigError(f"{self.cls.__name__}.{fn.__name__} must take (self, state, event)")
        hints = _hints(fn, self.cls)
        event_cls = hints.get(params[2].name)
        if not (isinstance(event_cls, type) and issubclass(event_cls, msgspec.Struct)):
            raise ConfigError(
                f"{self.cls.__name__}.{fn.__name__}: annotate the event parameter with its msgspec.Struct class"
            )
        checks.check_applier(self.cls, fn, hints, self.initial)
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
                try:
                    return spec.decoder.decode(args)
                except msgspec.ValidationError as exc:
                    if "got `float`" not in str(exc):
                        raise
                    # JSON has one number type: 1.0 is the integer 1 (JSON Schema agrees), 1.5 is not
                    return spec.decoder.decode(msgspec.json.encode(_whole(msgspec.json.decode(args))))
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

    def fold(
        self,
        entity: EventSourcedEntity[Any],
        state: Any,
        events: Iterable[msgspec.Struct],
        command: CommandSpec | None = None,
    ) -> Any:
        """Apply new events; a mistake in the entity is an `internal` CommandError naming it (nothing stored yet)."""
        for event in events:
            state = self.apply(entity, state, event, command)
        return state

    def apply(
        self, entity: EventSourcedEntity[Any], state: Any, event: msgspec.Struct, command: CommandSpec | None = None
    ) -> Any:
        fn = self.appliers.get(type(event))
        if fn is None:
            by = f"{self.cls.__name__}.{command.handler.__name__} persisted" if command else "event"
            raise InternalError(
                ErrorCode.INTERNAL,
                f"{by} {type(event).__name__}, but {self.cls.__name__} has no @applies method for it;"
                " nothing was stored",
            )
        new = fn(entity, state, event)
        if self.checks_state and not isinstance(new, self.state_type):
            raise InternalError(
                ErrorCode.INTERNAL,
                f"{self.cls.__name__}.{fn.__name__} returned {type(new).__name__} for {type(event).__name__},"
                f" not the state ({self.state_type.__name__}): an @applies method returns the new state;"
                " nothing was stored",
            )
        return new

    def not_an_effect(self, spec: CommandSpec, value: Any) -> CommandError:
        """What a command handler that returned something else than an Effect is answered."""
        return InternalError(
            ErrorCode.INTERNAL,
            f"{self.cls.__name__}.{spec.handler.__name__} returned {type(value).__name__}, not an Effect"
            " (return self.persist(...), self.reply(...) or self.error(...)); nothing was stored",
        )

    def encode_reply(self, value: Any) -> bytes:
        return self.state_encoder.encode(value)

    def decode_reply(self, spec: CommandSpec, data: bytes) -> Any:
        """A repeated command id's first reply; plain JSON if that id was first used for another command."""
        try:
            return msgspec.json.decode(data, type=spec.reply_type, strict=False)
        except msgspec.ValidationError:
            return msgspec.json.decode(data)


def _unchanged(entity: Any, state: Any, event: Any) -> Any:
    return state


_models: dict[type, EntityModel] = {}


def model_of(cls: type[EventSourcedEntity[Any]]) -> EntityModel:
    """The compiled model of an entity class (cached; compiling validates the class)."""
    model = _models.get(cls)
    if model is None:
        if not (isinstance(cls, type) and issubclass(cls, EventSourcedEntity)):
            raise ConfigError(f"{cls!r} is not an EventSourcedEntity subclass")
        model = _models[cls] = EntityModel(cls)
    return model
