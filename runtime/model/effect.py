"""Effects: what a command handler decides, as data the runtime carries out.

A handler never writes anything itself. It returns an Effect, and the runtime
persists the events (all or none), applies them, and only then computes and
sends the reply, so a reply can never describe a state that was not stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from .errors import CommandError, ErrorCode

R = TypeVar("R")
S = TypeVar("S")

_NO_REPLY: Any = object()


class Effect(Generic[R]):
    """Events to persist, then a reply (a value or a function of the new state), or an error."""

    __slots__ = ("_reply", "delete_entity", "error", "events")

    def __init__(
        self,
        events: tuple[msgspec.Struct, ...] = (),
        *,
        error: CommandError | None = None,
        delete_entity: bool = False,
    ) -> None:
        self.events = events
        self.error = error
        self.delete_entity = delete_entity
        self._reply: Any = _NO_REPLY

    def reply(self, value: R | Callable[[Any], R]) -> Effect[R]:
        """Answer with `value`, or with `value(new_state)` if it is callable."""
        if self.error is not None:
            raise TypeError("an error effect cannot also reply")
        self._reply = value
        return self

    def delete(self) -> Effect[R]:
        """After persisting, delete the entity: its events and snapshots go, it takes no more commands."""
        if self.error is not None:
            raise TypeError("an error effect cannot also delete")
        self.delete_entity = True
        return self

    def reply_for(self, state: Any) -> Any:
        value = self._reply
        if value is _NO_REPLY:
            return None
        return value(state) if callable(value) else value

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Effect(error={self.error!r})"
        return f"Effect(events={self.events!r}, delete={self.delete_entity})"


def persist(*events: msgspec.Struct) -> Effect[Any]:
    for e in events:
        if not isinstance(e, msgspec.Struct):
            raise TypeError(f"persist() takes event Structs, got {e!r}")
    return Effect(events)


def reply(value: Any) -> Effect[Any]:
    return Effect().reply(value)


def error(message: str, code: ErrorCode | str = ErrorCode.REJECTED, details: Any = None) -> Effect[Any]:
    return Effect(error=CommandError(code, message, details))


def delete() -> Effect[Any]:
    return Effect(delete_entity=True)
