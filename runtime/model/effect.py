"""Effects: what a command handler decides, as data the runtime carries out.

A handler never writes anything itself. It returns an Effect, and the runtime
persists the events (all or none), applies them, and only then computes and
sends the reply, so a reply can never describe a state that was not stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import msgspec

from .errors import CommandError, ErrorCode
from .timer_events import TimerCancelled, TimerOp, check_timer_name, schedule_op

R = TypeVar("R")
S = TypeVar("S")

_NO_REPLY: Any = object()


class Effect(Generic[R]):
    """Events to persist, then a reply (a value or a function of the new state), or an error."""

    __slots__ = ("_reply", "delete_entity", "error", "events", "forget_entity", "timers")

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
        self.forget_entity = False
        self._reply: Any = _NO_REPLY
        self.timers: list[TimerOp] = []  # stored with the events, atomically (see model/timer_events.py)

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

    def forget(self) -> Effect[R]:
        """After persisting, destroy the entity's data key (crypto-shredding; `encrypted=True` types only)."""
        if self.error is not None:
            raise TypeError("an error effect cannot also forget")
        self.forget_entity = True
        return self

    def schedule(
        self,
        name: str,
        *,
        to: tuple[str, str, str],
        args: Mapping[str, Any] | msgspec.Struct | None = None,
        after: dt.timedelta | float | None = None,
        at: dt.datetime | None = None,
        every: dt.timedelta | float | None = None,
    ) -> Effect[R]:
        """Also set timer `name`: send command `to=(type, id, command)` with `args` `after` a delay or `at` a time.

        Stored with this effect's events (a refused command schedules nothing); replaces a timer
        of the same name; `every` repeats it. A bad delay or time is `invalid`.
        """
        if self.error is not None:
            raise TypeError("an error effect cannot also schedule")
        self.timers.append(schedule_op(name, to=to, args=args, after=after, at=at, every=every))
        return self

    def cancel_timer(self, name: str) -> Effect[R]:
        """Also cancel timer `name` (a no-op if there is none), stored with this effect's events."""
        if self.error is not None:
            raise TypeError("an error effect cannot also cancel a timer")
        self.timers.append(TimerCancelled(name=check_timer_name(name)))
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


def forget() -> Effect[Any]:
    return Effect().forget()
