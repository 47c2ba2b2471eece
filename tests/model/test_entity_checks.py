"""Entity mistakes are found when the App is built, naming Class.method; what cannot be seen then is
caught before anything is stored, as an `internal` answer naming the same, and the entity keeps serving."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from runtime import (
    App,
    ConfigError,
    Effect,
    EventSourcedEntity,
    InternalError,
    MemoryJournal,
    Runtime,
    applies,
    command,
)

pytestmark = pytest.mark.anyio


class Added(msgspec.Struct):
    n: int


class Removed(msgspec.Struct):
    n: int


class Count(msgspec.Struct):
    n: int = 0


def build(cls: type[EventSourcedEntity[Any]]) -> App:
    return App("checks", entities=[cls])


def test_a_command_must_be_annotated_to_return_an_effect() -> None:
    class NoReturn(EventSourcedEntity[Count], name="c1"):
        initial = Count()

        @command
        def add(self, c: Count, n: int):  # type: ignore[no-untyped-def]
            return self.persist(Added(n))

        @applies
        def added(self, c: Count, e: Added) -> Count:
            return Count(c.n + e.n)

    with pytest.raises(ConfigError, match=r"NoReturn\.add must be annotated `-> Effect\[ReplyType\]`.*not nothing"):
        build(NoReturn)

    class ReturnsInt(EventSourcedEntity[Count], name="c2"):
        initial = Count()

        @command
        def add(self, c: Count, n: int) -> int:
            return n

    with pytest.raises(ConfigError, match=r"ReturnsInt\.add must be annotated .* not int"):
        build(ReturnsInt)


def test_command_arguments_and_state_must_be_annotated() -> None:
    class BareArg(EventSourcedEntity[Count], name="c3"):
        initial = Count()

        @command
        def add(self, c: Count, n) -> Effect[int]:  # type: ignore[no-untyped-def]
            return self.reply(n)

    with pytest.raises(ConfigError, match=r"BareArg\.add: annotate argument 'n'"):
        build(BareArg)

    class WrongState(EventSourcedEntity[Count], name="c4"):
        initial = Count()

        @command
        def add(self, c: Added, n: int) -> Effect[int]:
            return self.reply(n)

    with pytest.raises(ConfigError, match=r"WrongState\.add: the state parameter 'c' is annotated Added.*Count"):
        build(WrongState)


def test_an_applies_must_return_the_state_type() -> None:
    class NoReturn(EventSourcedEntity[Count], name="c5"):
        initial = Count()

        @applies
        def added(self, c: Count, e: Added):  # type: ignore[no-untyped-def]
            return Count(c.n + e.n)

    with pytest.raises(ConfigError, match=r"NoReturn\.added must be annotated `-> Count`"):
        build(NoReturn)

    class ReturnsNone(EventSourcedEntity[Count], name="c6"):
        initial = Count()

        @applies
        def added(self, c: Count, e: Added) -> None:
            Count(c.n + e.n)

    with pytest.raises(ConfigError, match=r"ReturnsNone\.added returns None, not the state type Count"):
        build(ReturnsNone)


def test_initial_must_be_the_declared_state_type() -> None:
    class Mismatch(EventSourcedEntity[Count], name="c7"):
        initial = Added(0)

    with pytest.raises(ConfigError, match=r"Mismatch\.initial is Added, not the state type Count"):
        build(Mismatch)


def test_an_event_named_in_persist_needs_an_applies() -> None:
    class Forgot(EventSourcedEntity[Count], name="c8"):
        initial = Count()

        @command
        def remove(self, c: Count, n: int) -> Effect[int]:
            return self.persist(Removed(n)).reply(lambda s: s.n)

    with pytest.raises(ConfigError, match=r"Forgot\.remove persists Removed, but Forgot has no @applies method for it"):
        build(Forgot)


def test_a_well_written_entity_passes_every_check() -> None:
    class Fine(EventSourcedEntity[Count], name="c9"):
        initial = Count()

        @command
        async def add(self, c: Count, n: int = 1) -> Effect[int]:
            return self.persist(Added(n)).reply(lambda s: s.n)

        @applies
        def added(self, c: Count, e: Added) -> Count:
            return Count(c.n + e.n)

    assert build(Fine).entity("c9") is Fine


# -- what only a run shows: answered `internal`, nothing stored, the entity keeps serving ----------


class Sneaky(EventSourcedEntity[Count], name="sneaky"):
    """Mistakes no reading of the class can see: the event and the return value are computed."""

    initial = Count()

    @command
    def add(self, c: Count, n: int) -> Effect[int]:
        return self.persist(Added(n)).reply(lambda s: s.n)

    @command
    def hidden(self, c: Count, n: int) -> Effect[int]:
        events = [Removed(n)]  # built away from persist(...): only the run-time check sees it
        return self.persist(*events)

    @command
    def number(self, c: Count, n: int) -> Effect[int]:
        return n  # type: ignore[return-value]

    @command
    def forgetful(self, c: Count, n: int) -> Effect[int]:
        return self.persist(Added(-1000))

    @applies
    def added(self, c: Count, e: Added) -> Count:
        if e.n == -1000:
            return None  # type: ignore[return-value]
        return Count(c.n + e.n)


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("hidden", r"Sneaky\.hidden persisted Removed, but Sneaky has no @applies method for it; nothing was stored"),
        ("number", r"Sneaky\.number returned int, not an Effect .*; nothing was stored"),
        ("forgetful", r"Sneaky\.added returned NoneType for Added, not the state \(Count\).*nothing was stored"),
    ],
)
async def test_run_time_mistakes_are_internal_store_nothing_and_the_entity_keeps_serving(
    cmd: str, message: str
) -> None:
    journal = MemoryJournal()
    async with journal, Runtime(App("sneaky", entities=[Sneaky]), journal) as rt:
        assert (await rt.ask("sneaky", "s1", "add", {"n": 2})).seq == 1
        with pytest.raises(InternalError, match=message):
            await rt.ask("sneaky", "s1", cmd, {"n": 5})
        assert [e.seq for e in await journal.read("sneaky", "s1")] == [1]
        reply = await rt.ask("sneaky", "s1", "add", {"n": 3})
        assert (reply.result, reply.seq) == (5, 2)
