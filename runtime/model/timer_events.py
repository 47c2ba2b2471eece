"""Durable timers as part of an Effect: schedule a command, or cancel one, by name.

A timer is not stored beside the events: it *is* an event, a system event
(`memoir.TimerScheduled`, `memoir.TimerCancelled`) appended to the scheduling
entity's own stream in the same batch as the command's events. So on every
journal (memory, SQLite, PostgreSQL, JetStream) it is as atomic as the events
are: a refused or failed command schedules nothing, an acknowledged one never
loses its timer, and the entity's history says when it scheduled what. The
entity's `@applies` handlers never see system events; recovery skips them.

A timer is identified by (owner type, owner id, name); scheduling again under
the same name replaces it. Its generation is the seq of the event that scheduled
it, so the command it fires carries an id derived from both (`fire_command_id`):
a timer fired twice changes its target once.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from .errors import CommandError, ErrorCode

SYSTEM_PREFIX = "memoir."
SCHEDULED = "memoir.TimerScheduled"
CANCELLED = "memoir.TimerCancelled"

MAX_DELAY = dt.timedelta(days=366)
"""The furthest ahead a timer may be set: beyond it `schedule` refuses with `invalid`."""
MIN_EVERY = dt.timedelta(seconds=1)
"""The shortest interval of a recurring timer (the scheduler's resolution is about a second)."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_system(event_name: str) -> bool:
    """Whether a stored event is the runtime's own (a timer), not one of the entity's."""
    return event_name.startswith(SYSTEM_PREFIX)


def is_timer(event_name: str) -> bool:
    """Whether a stored event is a timer op (stored in the clear: the relay reads it with no keys)."""
    return event_name in (SCHEDULED, CANCELLED)


class TimerScheduled(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A timer set: at `due` (unix ns) send `command` with `args` to `to_type`/`to_id`."""

    name: str
    due: int
    to_type: str
    to_id: str
    command: str
    args: msgspec.Raw = msgspec.Raw(b"{}")
    every: int = 0  # ns between firings of a recurring timer; 0: once


class TimerCancelled(msgspec.Struct, frozen=True, kw_only=True):
    name: str


TimerOp = TimerScheduled | TimerCancelled

_encoder = msgspec.json.Encoder()
_scheduled = msgspec.json.Decoder(TimerScheduled)
_cancelled = msgspec.json.Decoder(TimerCancelled)


def encode_op(op: TimerOp) -> tuple[str, bytes]:
    """A timer operation as a stored event: (event name, JSON payload)."""
    return (SCHEDULED if isinstance(op, TimerScheduled) else CANCELLED), _encoder.encode(op)


def decode_op(name: str, payload: bytes) -> TimerOp | None:
    """The timer operation a stored system event holds, or None if it holds none we know."""
    if name == SCHEDULED:
        return _scheduled.decode(payload)
    if name == CANCELLED:
        return _cancelled.decode(payload)
    return None


def fire_command_id(owner_type: str, owner_id: str, name: str, generation: int, firing: int | None = None) -> str:
    """The command id a timer fires with: the same however often the same firing is delivered."""
    base = f"timer:{owner_type}/{owner_id}/{name}/{generation}"
    return base if firing is None else f"{base}/{firing}"


def _invalid(message: str) -> CommandError:
    return CommandError(ErrorCode.INVALID, message)


def check_timer_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _invalid(f"timer name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return name


def _duration(what: str, value: object) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise _invalid(f"timer {what} must be a finite duration, got {value!r}")
        return dt.timedelta(seconds=value)
    raise _invalid(f"timer {what} must be a timedelta or a number of seconds, got {type(value).__name__}")


def schedule_op(
    name: str,
    *,
    to: tuple[str, str, str],
    args: Mapping[str, Any] | msgspec.Struct | None = None,
    after: dt.timedelta | float | None = None,
    at: dt.datetime | None = None,
    every: dt.timedelta | float | None = None,
    now_ns: int | None = None,
) -> TimerScheduled:
    """Validate a timer at decision time; anything wrong is `invalid`, so nothing is stored."""
    check_timer_name(name)
    if not (isinstance(to, tuple) and len(to) == 3 and all(isinstance(t, str) and t for t in to)):
        raise _invalid(f"timer {name!r}: `to` must be (entity type, entity id, command), got {to!r}")
    now = time.time_ns() if now_ns is None else now_ns
    period = 0
    if every is not None:
        step = _duration("interval `every`", every)
        if step < MIN_EVERY or step > MAX_DELAY:
            raise _invalid(f"timer {name!r}: `every` must be between {MIN_EVERY} and {MAX_DELAY.days} days")
        period = int(step.total_seconds() * 1e9)
        if after is None and at is None:
            after = step  # a recurring timer first fires one interval from now
    if (after is None) == (at is None):
        raise _invalid(f"timer {name!r}: give exactly one of `after` and `at`")
    if after is not None:
        delay = _duration("delay `after`", after)
        if delay < dt.timedelta(0):
            raise _invalid(f"timer {name!r}: delay `after` is negative ({delay})")
        if delay > MAX_DELAY:
            raise _invalid(f"timer {name!r}: delay `after` is beyond the maximum of {MAX_DELAY.days} days")
        due = now + int(delay.total_seconds() * 1e9)
    else:
        if not isinstance(at, dt.datetime):
            raise _invalid(f"timer {name!r}: `at` must be a datetime, got {type(at).__name__}")
        if at.tzinfo is None:
            raise _invalid(f"timer {name!r}: `at` ({at.isoformat()}) has no timezone")
        due = int(at.timestamp() * 1e9)  # in the past: fires at once
        if due - now > MAX_DELAY.total_seconds() * 1e9:
            raise _invalid(f"timer {name!r}: `at` is more than {MAX_DELAY.days} days ahead")
    try:
        raw = msgspec.Raw(_encoder.encode({} if args is None else args))
    except (TypeError, msgspec.EncodeError) as exc:
        raise _invalid(f"timer {name!r}: arguments are not JSON: {exc}") from None
    to_type, to_id, command = to
    return TimerScheduled(name=name, due=due, to_type=to_type, to_id=to_id, command=command, args=raw, every=period)


class PendingTimer(msgspec.Struct, frozen=True, kw_only=True):
    """One of an entity's timers as its history leaves it: the latest schedule under a name."""

    name: str
    generation: int  # seq of the event that scheduled it
    position: int  # that event's journal position
    due: int
    to_type: str
    to_id: str
    command: str
    args: msgspec.Raw
    every: int = 0

    @property
    def due_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.due / 1e9, tz=dt.UTC)


def fold_op(timers: dict[str, PendingTimer], op: TimerOp, seq: int, position: int) -> dict[str, PendingTimer]:
    """Apply one timer operation, stored at `seq` and `position`, to timers-by-name."""
    if isinstance(op, TimerScheduled):
        timers[op.name] = PendingTimer(
            name=op.name,
            generation=seq,
            position=position,
            due=op.due,
            to_type=op.to_type,
            to_id=op.to_id,
            command=op.command,
            args=op.args,
            every=op.every,
        )
    else:
        timers.pop(op.name, None)
    return timers
