"""Mistakes in an entity class, found when the class is compiled (at `App(...)`), not at its first command.

Each check names the class and method and says what to write instead:

- every @command and @applies method annotates its state parameter, its arguments and its
  return: a command returns `Effect[...]`, an @applies method returns the state type;
- an @applies method takes (state, event), the event annotated with its msgspec.Struct class;
- `initial` is an instance of the state type the class declares (`EventSourcedEntity[Stock]`);
- an event class a command builds inside `persist(...)` has an @applies method.

Which events a command persists cannot be known from its code in general, so the last check
reads only what it can see (an event class called by name inside `persist(...)`); the
runtime checks every event before anything is stored (`EntityModel.apply`).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .effect import Effect
from .errors import ConfigError


def declared_state_type(cls: type) -> Any:
    """X in `class C(EventSourcedEntity[X])`, or None if the class does not say."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            origin = typing.get_origin(base)
            if args and getattr(origin, "__name__", "") == "EventSourcedEntity":
                return None if isinstance(args[0], typing.TypeVar) else args[0]
    return None


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits `annotation`, where isinstance can tell; True where it cannot (a Literal, a TypeVar)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    cls = origin or annotation
    return not isinstance(cls, type) or isinstance(value, cls)


def check_initial(cls: type, initial: Any) -> None:
    declared = declared_state_type(cls)
    if declared is not None and not _accepts(declared, initial):
        raise ConfigError(
            f"{cls.__name__}.initial is {type(initial).__name__}, not the state type {_name(declared)}"
            f" its class declares (EventSourcedEntity[{_name(declared)}])"
        )


def check_command(cls: type, fn: Callable[..., Any], hints: dict[str, Any], initial: Any) -> None:
    where = f"{cls.__name__}.{fn.__name__}"
    params = list(inspect.signature(fn).parameters.values())
    _check_state_param(where, params[1].name, hints, initial)
    for p in params[2:]:
        if p.name not in hints:
            raise ConfigError(f"{where}: annotate argument {p.name!r} with its type (it validates the payload)")
    ret = hints.get("return")
    if ret is None or (typing.get_origin(ret) or ret) is not Effect:
        shown = "nothing" if ret is None else _name(ret)
        raise ConfigError(f"{where} must be annotated `-> Effect[ReplyType]` (it returns an Effect), not {shown}")


def check_applier(cls: type, fn: Callable[..., Any], hints: dict[str, Any], initial: Any) -> None:
    where = f"{cls.__name__}.{fn.__name__}"
    params = list(inspect.signature(fn).parameters.values())
    _check_state_param(where, params[1].name, hints, initial)
    ret = hints.get("return")
    if ret is None:
        raise ConfigError(f"{where} must be annotated `-> {type(initial).__name__}`: an @applies returns the new state")
    if not _accepts(ret, initial):
        raise ConfigError(f"{where} returns {_name(ret)}, not the state type {type(initial).__name__}")


def _check_state_param(where: str, name: str, hints: dict[str, Any], initial: Any) -> None:
    if name not in hints:
        raise ConfigError(f"{where}: annotate the state parameter {name!r} with its type, {type(initial).__name__}")
    if not _accepts(hints[name], initial):
        raise ConfigError(
            f"{where}: the state parameter {name!r} is annotated {_name(hints[name])},"
            f" but the state (initial) is {type(initial).__name__}"
        )


def check_persisted_events(cls: type, fn: Callable[..., Any], appliers: dict[type, Any]) -> None:
    """An event class named inside `persist(...)` in the command's source must have an @applies method."""
    for event_cls in persisted_classes(fn):
        if event_cls not in appliers:
            raise ConfigError(
                f"{cls.__name__}.{fn.__name__} persists {event_cls.__name__}, but {cls.__name__} has no @applies"
                f" method for it (add `@applies def ...(self, state, event: {event_cls.__name__}) -> State`)"
            )


def persisted_classes(fn: Callable[..., Any]) -> Iterator[type]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        names = inspect.getclosurevars(fn)
    except (OSError, TypeError, SyntaxError, ValueError):
        return  # no source to read (a REPL, a generated class): the run-time check covers it
    scope = {**names.builtins, **names.globals, **names.nonlocals}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _callee(node.func) == "persist"):
            continue
        for arg in node.args:
            if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name):
                found = scope.get(arg.func.id)
                if isinstance(found, type) and issubclass(found, msgspec.Struct):
                    yield found


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
