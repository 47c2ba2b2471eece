"""Entity actors in the runtime: turns, mailboxes, activation, passivation, snapshots, failures,
command ids, conflicts between writers, deletion, time travel."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import anyio
import msgspec
import pytest
from support.waiting import eventually

from runtime import (
    App,
    CommandError,
    Effect,
    EventSourcedEntity,
    Runtime,
    SqliteJournal,
    applies,
    command,
    model_of,
    state_at,
)

pytestmark = pytest.mark.anyio


class Noted(msgspec.Struct, frozen=True):
    text: str


class Notes(msgspec.Struct, frozen=True):
    items: tuple[str, ...] = ()


IN_TURN: dict[str, int] = {}
MAX_IN_TURN: dict[str, int] = {}
TOGETHER: list[int] = []  # how many entities were in a turn at once, at each turn's start


class Notebook(EventSourcedEntity[Notes], name="notebook"):
    initial = Notes()
    snapshot_every = 5

    @command
    async def note(self, notes: Notes, text: str, pause: float = 0.0) -> Effect[int]:
        me = self.entity_id
        IN_TURN[me] = IN_TURN.get(me, 0) + 1
        MAX_IN_TURN[me] = max(MAX_IN_TURN.get(me, 0), IN_TURN[me])
        TOGETHER.append(sum(1 for n in IN_TURN.values() if n))
        try:
            await anyio.sleep(pause)
        finally:
            IN_TURN[me] -= 1
        return self.persist(Noted(text)).reply(lambda s: len(s.items))

    @command
    def explode(self, notes: Notes) -> Effect[None]:
        raise RuntimeError("handler bug")

    @command
    def bad_event(self, notes: Notes) -> Effect[None]:
        return self.persist(Noted("boom!"))  # the applier refuses it: nothing may be stored

    @command
    def forget(self, notes: Notes) -> Effect[None]:
        return self.delete()

    @command
    def read(self, notes: Notes) -> Effect[Notes]:
        return self.reply(notes)

    @applies
    def noted(self, notes: Notes, e: Noted) -> Notes:
        if e.text == "boom!":
            raise ValueError("cannot apply boom")
        return Notes((*notes.items, e.text))


app = App("notes", entities=[Notebook])


async def test_one_turn_at_a_time_per_entity_and_entities_in_parallel(tmp_path: Path) -> None:
    IN_TURN.clear()
    MAX_IN_TURN.clear()
    TOGETHER.clear()
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j) as rt:
        async with anyio.create_task_group() as tg:
            for entity in ("a", "b", "c", "d"):
                for i in range(5):
                    tg.start_soon(rt.ask, "notebook", entity, "note", {"text": f"{i}", "pause": 0.02})
        assert MAX_IN_TURN == {"a": 1, "b": 1, "c": 1, "d": 1}
        # while one entity's turn waits, the others' turns run: entities side by side
        assert max(TOGETHER) > 1, TOGETHER
        assert (await rt.ask("notebook", "a", "read")).result.items == ("0", "1", "2", "3", "4")


async def test_a_full_mailbox_answers_overloaded(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j, mailbox_size=3) as rt:
        codes: list[str] = []

        async def send(i: int) -> None:
            try:
                await rt.ask("notebook", "busy", "note", {"text": str(i), "pause": 0.05})
                codes.append("ok")
            except CommandError as exc:
                codes.append(str(exc.code))

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(send, i)
        assert codes.count("ok") == 3 and codes.count("overloaded") == 7
        assert await j.head("notebook", "busy") == 3


async def test_live_actors_are_bounded_and_come_back_intact(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j, max_live_actors=10) as rt:
        for i in range(50):
            await rt.ask("notebook", f"n{i}", "note", {"text": f"first {i}"})
            assert rt.live_actors <= 10
        for i in range(50):
            await rt.ask("notebook", f"n{i}", "note", {"text": f"second {i}"})
        for i in range(50):
            assert (await rt.ask("notebook", f"n{i}", "read")).result.items == (f"first {i}", f"second {i}")
        assert rt.live_actors <= 10


async def test_idle_actors_are_passivated(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j, passivate_after=0.1) as rt:
        for i in range(5):
            await rt.ask("notebook", f"n{i}", "note", {"text": "x"})
        assert rt.live_actors == 5
        await eventually(lambda: rt.live_actors == 0, 5, "every idle actor passivated")
        assert (await rt.ask("notebook", "n1", "read")).result.items == ("x",)


async def test_recovery_starts_from_the_latest_snapshot(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j:
        async with Runtime(app, j) as rt:
            for i in range(12):
                await rt.ask("notebook", "long", "note", {"text": str(i)})
        snap = await j.load_snapshot("notebook", "long")
        assert snap is not None and snap.seq == 10
        # Prove recovery uses it: drop the events it covers; the state must still be complete.
        await j.delete("notebook", "long", to_seq=10)
        async with Runtime(app, j) as rt:
            assert (await rt.ask("notebook", "long", "read")).result.items == tuple(str(i) for i in range(12))
            assert (await rt.ask("notebook", "long", "note", {"text": "12"})).seq == 13


async def test_a_failing_handler_answers_internal_and_everything_keeps_serving(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j) as rt:
        await rt.ask("notebook", "a", "note", {"text": "before"})
        before = await j.last_position()
        for cmd in ("explode", "bad_event"):
            with pytest.raises(CommandError) as info:
                await rt.ask("notebook", "a", cmd)
            assert info.value.code == "internal" and f"notebook.{cmd} failed" in info.value.message
        assert await j.last_position() == before, "nothing persisted"
        assert (await rt.ask("notebook", "a", "note", {"text": "after"})).result == 2
        assert (await rt.ask("notebook", "b", "note", {"text": "other"})).result == 1


async def test_a_repeated_command_id_gets_the_first_reply_also_after_a_restart(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j:
        async with Runtime(app, j) as rt:
            first = await rt.ask("notebook", "a", "note", {"text": "once"}, command_id="cmd-1")
            again = await rt.ask("notebook", "a", "note", {"text": "once"}, command_id="cmd-1")
            assert (first.result, first.seq, first.duplicate) == (1, 1, False)
            assert (again.result, again.seq, again.duplicate) == (1, 1, True)
            for i in range(7):  # past a snapshot, so the id must survive in it
                await rt.ask("notebook", "a", "note", {"text": str(i)})
        async with Runtime(app, j) as rt:  # recovered from snapshot + events
            later = await rt.ask("notebook", "a", "note", {"text": "once"}, command_id="cmd-1")
            assert (later.result, later.seq, later.duplicate) == (1, 1, True)
        assert await j.head("notebook", "a") == 8


async def test_a_stale_writer_gets_conflict_then_succeeds_on_retry(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j) as one, Runtime(app, j) as two:
        await one.ask("notebook", "shared", "note", {"text": "1"})
        await two.ask("notebook", "shared", "note", {"text": "2"})  # two recovers, writes seq 2
        with pytest.raises(CommandError) as info:
            await one.ask("notebook", "shared", "note", {"text": "3"}, command_id="x")  # one is stale
        assert info.value.code == "conflict"
        retried = await one.ask("notebook", "shared", "note", {"text": "3"}, command_id="x")
        assert retried.seq == 3
        assert (await two.ask("notebook", "shared", "read")).result.items == ("1", "2")  # two is stale now
        assert [e.seq for e in await j.read("notebook", "shared")] == [1, 2, 3]


async def test_deleting_an_entity_removes_its_events_and_refuses_commands(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j) as rt:
        await rt.ask("notebook", "me", "note", {"text": "personal"})
        await rt.ask("notebook", "me", "forget")
        assert await j.read("notebook", "me") == [] and await j.is_deleted("notebook", "me")
        with pytest.raises(CommandError) as info:
            await rt.ask("notebook", "me", "note", {"text": "again"})
        assert info.value.code == "rejected" and "was deleted" in info.value.message


async def test_bad_input_is_refused_before_any_entity_and_stores_nothing(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j) as rt:
        await rt.ask("notebook", "a", "note", {"text": "x"})
        before = await j.last_position()
        cases = [
            (("notebook", "a", "note", b'{"text": 5}'), "invalid", "$.text"),
            (("notebook", "a", "note", b"{}"), "invalid", "missing required field `text`"),
            (("notebook", "a", "note", b'{"text": "x", "y": 1}'), "invalid", "unknown field `y`"),
            (("notebook", "a", "note", b"{nope"), "invalid", "not valid JSON"),
            (("notebook", "a", "sing", b"{}"), "unknown_command", "no command 'sing'"),
            (("diary", "a", "note", b"{}"), "unknown_entity_type", "no entity type 'diary'"),
            (("notebook", "", "note", b'{"text": "x"}'), "invalid", "entity id is empty"),
            (("notebook", "x" * 257, "note", b'{"text": "x"}'), "invalid", "the limit is 256"),
            (("notebook", "tab\there", "note", b'{"text": "x"}'), "invalid", "control characters"),
        ]
        for args, code, words in cases:
            with pytest.raises(CommandError) as info:
                await rt.ask(*args)
            assert info.value.code == code and words in info.value.message, args
        assert await j.last_position() == before


async def test_time_travel_by_seq_and_by_recorded_time(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as j, Runtime(app, j) as rt:
        for text in ("a", "b"):
            await rt.ask("notebook", "t", "note", {"text": text})
        await anyio.sleep(0.01)  # on purpose: a moment between the events, to travel to
        middle = dt.datetime.now(dt.UTC)
        await anyio.sleep(0.01)
        for text in ("c", "d", "e", "f", "g"):
            await rt.ask("notebook", "t", "note", {"text": text})
        model = model_of(Notebook)
        state, seq = await state_at(j, model, "t", seq=3)
        assert (state.items, seq) == (("a", "b", "c"), 3)
        state, seq = await state_at(j, model, "t", seq=6)  # from the snapshot at 5, plus event 6
        assert (state.items, seq) == (("a", "b", "c", "d", "e", "f"), 6)
        state, seq = await state_at(j, model, "t", at=middle)
        assert (state.items, seq) == (("a", "b"), 2)
