"""Where timers live on NATS: one JetStream stream per prefix that holds schedules and firings.

- `{prefix}.timers.sched.{type}.{id}.{name}`: the schedule of one timer, a message with a
  `Nats-Schedule` header (ADR-51, nats-server 2.12+). The subject is the timer's identity:
  nats-server keeps one schedule per subject, so a newer message replaces it, and purging
  the subject cancels it.
- `{prefix}.timers.fire.{type}.{id}.{name}`: where nats-server puts the schedule's body when
  it is due, in the same stream; the runtime's durable consumer sends the command.

The body is a `TimerFire` in JSON, so any client could read what a timer will do.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from .protocol import stream_prefix, token

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
H_SCHEDULE = "Nats-Schedule"
H_SCHEDULE_TARGET = "Nats-Schedule-Target"
H_SCHEDULER = "Nats-Scheduler"
H_GENERATION = "Memoir-Timer-Generation"


class TimerFire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a timer does when it fires, and who set it."""

    owner_type: str
    owner_id: str
    name: str
    generation: int  # seq of the owner's event that scheduled it
    due: int  # unix ns; a firing delivered earlier waits for it
    to_type: str
    to_id: str
    command: str
    args: msgspec.Raw = msgspec.Raw(b"{}")
    every: int = 0


def timer_stream(prefix: str) -> str:
    return f"{stream_prefix(prefix)}_TIMERS"


def schedule_subject(prefix: str, entity_type: str, entity_id: str, name: str) -> str:
    return f"{prefix}.timers.sched.{entity_type}.{token(entity_id)}.{name}"


def fire_subject(prefix: str, entity_type: str, entity_id: str, name: str) -> str:
    return f"{prefix}.timers.fire.{entity_type}.{token(entity_id)}.{name}"


def timer_subjects(prefix: str) -> list[str]:
    return [f"{prefix}.timers.sched.>", f"{prefix}.timers.fire.>"]


def schedule_header(due_ns: int, every_ns: int = 0) -> str:
    """`@at <RFC 3339 UTC with microseconds>`, or `@every <Go duration>` for a recurring timer."""
    if every_ns:
        return f"@every {every_ns // 1_000_000}ms"
    at = _EPOCH + dt.timedelta(microseconds=-(-due_ns // 1000))  # rounded up: never before `due`
    return "@at " + at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
