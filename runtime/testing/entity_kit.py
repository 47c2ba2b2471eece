"""Test an entity in a line or two: given events, when a command, then events, reply and state.

No journal, no event loop, no I/O — the shape of Akka's
EventSourcedBehaviorTestKit. Each command's arguments are validated exactly as
the runtime validates them, and every persisted event and the new state are
round-tripped through their JSON codecs, so an event that would not survive
the journal fails here first.

```python
kit = EntityTestKit(InventoryItem, "XYZ-1").given(Opened(100, d1, d2))
r = kit.when("sell", units=20, on=date(2022, 3, 15))
assert r.events == [Sold(20, date(2022, 3, 15))] and r.reply == 80 and r.state.units == 80
```
"""

from __future__ import annotations

import inspect
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from ..model.access import Caller
from ..model.effect import Effect
from ..model.entity import EventSourcedEntity, model_of
from ..model.envelope import Envelope
from ..model.errors import CommandError, ConfigError
from ..model.timer_events import TimerOp

S = TypeVar("S")


@dataclass(frozen=True)
class Result(Generic[S]):
    """What one command did: the events it persisted, its reply, the state after, or its error."""

    events: list[msgspec.Struct] = field(default_factory=list)
    reply: Any = None
    state: Any = None
    error: CommandError | None = None
    deleted: bool = False
    timers: list[TimerOp] = field(default_factory=list)  # set or cancelled with the events
    forgotten: bool = False  # the effect destroys the entity's data key (encrypted types)

    @property
    def event(self) -> msgspec.Struct:
        """The single event persisted (fails if there was not exactly one)."""
        if len(self.events) != 1:
            raise AssertionError(f"expected exactly one event, got {self.events!r}")
        return self.events[0]


def _run_sync(awaitable: Coroutine[Any, Any, Any], instead: str = "when_async") -> Any:
    """Drive a coroutine that never really suspends (an async handler with no I/O)."""
    try:
        awaitable.send(None)
    except StopIteration as stop:
        return stop.value
    awaitable.close()
    raise RuntimeError(f"the async handler awaited real I/O; use `await kit.{instead}(...)`")


class EntityTestKit(Generic[S]):
    """Runs one entity's commands in memory, with no I/O: given events, when a command, then events, reply, state."""

    def __init__(self, entity: type[EventSourcedEntity[S]], entity_id: str = "test-1") -> None:
        self.model = model_of(entity)
        self.entity = entity(entity_id)
        self.state: S = self.model.initial
        self.events: list[msgspec.Struct] = []  # every event so far, given or persisted
        self.deleted = False

    def given(self, *events: msgspec.Struct) -> EntityTestKit[S]:
        """Start from the state these events produce."""
        for e in events:
            self._round_trip(e)
        self.state = self.model.fold(self.entity, self.state, events)
        self.events.extend(events)
        return self

    def acting_as(self, caller: Caller | None) -> EntityTestKit[S]:
        """Run the next commands as `caller` (what handlers see as `self.caller`; rules are the runtime's)."""
        self.entity.caller = caller
        return self

    def when(self, command: str, /, **args: Any) -> Result[S]:
        """Run one command as the runtime would (minus the journal) and return what it did."""
        try:
            spec, decoded = self._prepare(command, args)
            effect = self.model.decide(self.entity, self.state, spec, decoded)
            if inspect.iscoroutine(effect):
                effect = _run_sync(effect)
        except CommandError as exc:
            return Result(state=self.state, error=exc)
        return self._carry_out(effect)

    async def when_async(self, command: str, /, **args: Any) -> Result[S]:
        """`when` for async handlers that await something real."""
        try:
            spec, decoded = self._prepare(command, args)
            effect = self.model.decide(self.entity, self.state, spec, decoded)
            if inspect.isawaitable(effect):
                effect = await effect
        except CommandError as exc:
            return Result(state=self.state, error=exc)
        return self._carry_out(effect)

    def _prepare(self, command: str, args: dict[str, Any]) -> tuple[Any, Any]:
        if self.deleted:
            raise CommandError("rejected", f"{self.model.type_name}/{self.entity.entity_id} was deleted")
        spec = self.model.command_spec(command)
        return spec, self.model.decode_args(spec, args)

    def _carry_out(self, effect: Any) -> Result[S]:
        if not isinstance(effect, Effect):
            raise TypeError(f"the handler returned {type(effect).__name__}, not an Effect")
        if effect.error is not None:
            return Result(state=self.state, error=effect.error)
        if effect.forget_entity and not self.model.encrypted:
            raise ConfigError(f"forget() needs {self.model.cls.__name__}(..., encrypted=True)")
        events = [self._round_trip(e) for e in effect.events]
        state = self.model.fold(self.entity, self.state, events)
        state = self.model.state_decoder.decode(self.model.state_encoder.encode(state))
        reply = effect.reply_for(state)
        self.state = state
        self.events.extend(events)
        self.deleted = effect.delete_entity
        return Result(
            events=events,
            reply=reply,
            state=state,
            deleted=effect.delete_entity,
            timers=list(effect.timers),
            forgotten=effect.forget_entity,
        )

    def _round_trip(self, event: msgspec.Struct) -> msgspec.Struct:
        codec = self.model.codec
        spec = codec.spec(event)
        env = Envelope(
            entity_type=self.model.type_name,
            entity_id=self.entity.entity_id,
            seq=len(self.events) + 1,
            name=spec.name,
            version=spec.version,
            payload=codec.encode(event),
            recorded_at=0,
        )
        decoded = codec.decode(env)
        if decoded != event:
            raise AssertionError(f"{type(event).__name__} does not survive its JSON codec: {event!r} -> {decoded!r}")
        return decoded
