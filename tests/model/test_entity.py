"""The entity API: compiling a class, validating arguments from signatures, effects, async handlers."""

from __future__ import annotations

import msgspec
import pytest

from runtime import ConfigError, Effect, EventSourcedEntity, applies, command, model_of
from runtime.testing import EntityTestKit

pytestmark = pytest.mark.anyio


class Added(msgspec.Struct, frozen=True):
    n: int


class Counter(msgspec.Struct, frozen=True):
    total: int = 0


class Adder(EventSourcedEntity[Counter], name="adder"):
    initial = Counter()

    @command
    def add(self, c: Counter, n: int, times: int = 1) -> Effect[int]:
        return self.persist(*[Added(n)] * times).reply(lambda s: s.total)

    @command
    async def add_later(self, c: Counter, n: int) -> Effect[int]:
        return self.persist(Added(n)).reply(lambda s: s.total)

    @command(name="reset-all")
    def reset(self, c: Counter) -> Effect[None]:
        return self.delete()

    @applies
    def added(self, c: Counter, e: Added) -> Counter:
        return Counter(c.total + e.n)


def test_model_reads_commands_and_events_from_the_class() -> None:
    m = model_of(Adder)
    assert m.type_name == "adder" and set(m.commands) == {"add", "add_later", "reset-all"}
    assert m.commands["add_later"].is_async and m.commands["add"].reply_type is int
    assert m.codec.classes == [Added]


def test_arguments_are_validated_from_the_signature() -> None:
    m = model_of(Adder)
    spec = m.command_spec("add")
    assert m.decode_args(spec, b'{"n": 2}').times == 1
    assert m.decode_args(spec, {"n": 2, "times": 3}).times == 3
    for payload, words in [
        (b'{"n": "2"}', "Expected `int`, got `str` - at `$.n`"),
        (b"{}", "missing required field `n`"),
        (b'{"n": 1, "m": 2}', "unknown field `m`"),
        (b"[1]", "Expected `object`, got `array`"),
        (b'{"n": 1', "not valid JSON"),
        (b"\xff", "not valid UTF-8"),
    ]:
        with pytest.raises(Exception) as info:
            m.decode_args(spec, payload)
        assert info.value.code == "invalid" and words in info.value.message, payload  # type: ignore[attr-defined]


def test_atomic_multi_event_persist_and_delete_and_async() -> None:
    kit = EntityTestKit(Adder, "a")
    r = kit.when("add", n=2, times=3)
    assert r.events == [Added(2)] * 3 and r.reply == 6
    assert kit.when("add_later", n=1).reply == 7
    gone = kit.when("reset-all")
    assert gone.deleted and kit.when("add", n=1).error.code == "rejected"  # type: ignore[union-attr]


def test_badly_written_entities_fail_at_compile_time_with_a_clear_message() -> None:
    class NoInitial(EventSourcedEntity[Counter], name="no_initial"):
        pass

    with pytest.raises(ConfigError, match="no `initial` state"):
        model_of(NoInitial)

    class Unannotated(EventSourcedEntity[Counter], name="unannotated"):
        initial = Counter()

        @applies
        def added(self, c, e):  # type: ignore[no-untyped-def]
            return c

    with pytest.raises(ConfigError, match="annotate the event parameter"):
        model_of(Unannotated)

    class Twice(EventSourcedEntity[Counter], name="twice"):
        initial = Counter()

        @applies
        def one(self, c: Counter, e: Added) -> Counter:
            return c

        @applies
        def two(self, c: Counter, e: Added) -> Counter:
            return c

    with pytest.raises(ConfigError, match="two @applies handlers for Added"):
        model_of(Twice)
