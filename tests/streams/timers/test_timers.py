"""Durable timers: stored with the command's events on every journal, fired through JetStream schedules."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from support.journals import JournalFactory
from support.waiting import eventually

from entities.inventory import InventoryItem
from entities.reservation import Reservation, ReservationStock
from runtime import App, CommandError, Journal, Runtime, SqliteJournal
from runtime.model.timer_events import (
    CANCELLED,
    MAX_DELAY,
    SCHEDULED,
    TimerCancelled,
    TimerScheduled,
    fire_command_id,
    schedule_op,
)
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.serve.service.metrics import Metrics
from runtime.streams.timer_firing import TimerRelay, entity_timers, pending_timers
from runtime.testing import EntityTestKit
from streams.timers.clock import Clock

pytestmark = pytest.mark.anyio

APP = App("t", entities=[Clock, Reservation, InventoryItem], consumers=[ReservationStock])


@asynccontextmanager
async def serving(journal: Journal, server: EmbeddedNats) -> AsyncIterator[Service]:
    async with Service(APP, journal, nats_url=server.url, passivate_after=None) as svc:
        yield svc


async def ticks(svc: Service, clock_id: str) -> tuple[str, ...]:
    reply = await svc.runtime.ask("clock", clock_id, "get")
    return tuple(reply.result.ticks)


# -- stored atomically with the events, on every journal ---------------------------------------------


async def test_a_timer_is_stored_in_the_commands_own_batch(journal_factory: JournalFactory) -> None:
    async with journal_factory.open() as journal:
        async with Runtime(APP, journal) as rt:
            await rt.ask("reservation", "r1", "hold", {"sku": "A", "units": 2, "hold_for": 60}, command_id="c1")
            with pytest.raises(CommandError) as bad:
                await rt.ask("reservation", "r2", "hold", {"sku": "A", "units": 2, "hold_for": -1})
            assert bad.value.code == "invalid" and "negative" in bad.value.message
            with pytest.raises(CommandError):
                await rt.ask("clock", "c", "refuse", {"name": "x"})  # a refused command schedules nothing
            await rt.ask("reservation", "r3", "hold", {"sku": "A", "units": 1, "hold_for": 60})
            await rt.ask("reservation", "r3", "pay")
        r1 = await journal.read("reservation", "r1")
        assert [e.name for e in r1] == ["Held", SCHEDULED]
        assert {e.command_id for e in r1} == {"c1"} and r1[-1].reply is not None  # one write, one reply
        assert await journal.head("reservation", "r2") == 0 and await journal.head("clock", "c") == 0
        assert [e.name for e in await journal.read("reservation", "r3")] == ["Held", SCHEDULED, "Paid", CANCELLED]
        timers = await entity_timers(journal, "reservation", "r1")
        assert list(timers) == ["expire"] and timers["expire"].generation == 2
        assert await entity_timers(journal, "reservation", "r3") == {}
        async with Runtime(APP, journal) as rt:  # recovery folds the entity's events, not its timers
            assert (await rt.ask("reservation", "r3", "get")).result.status == "paid"


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"after": -0.001}, "negative"),
        ({"after": "5m"}, "timedelta or a number of seconds"),
        ({"after": float("nan")}, "finite"),
        ({"after": MAX_DELAY + dt.timedelta(seconds=1)}, "beyond the maximum"),
        ({"at": dt.datetime(2030, 1, 1)}, "no timezone"),
        ({"at": dt.datetime.now(dt.UTC) + MAX_DELAY * 2}, "days ahead"),
        ({}, "exactly one of"),
        ({"after": 1, "at": dt.datetime.now(dt.UTC)}, "exactly one of"),
        ({"every": 0.5}, "between"),
    ],
)
def test_a_bad_delay_is_invalid(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(CommandError) as bad:
        schedule_op("t", to=("clock", "c", "tick"), **kwargs)  # type: ignore[arg-type]
    assert bad.value.code == "invalid" and says in bad.value.message


def test_a_bad_name_or_target_is_invalid() -> None:
    for name, to in [("a.b", ("clock", "c", "tick")), ("ok", ("clock", "", "tick")), ("ok", ("clock", "c"))]:
        with pytest.raises(CommandError) as bad:
            schedule_op(name, to=to, after=1)  # type: ignore[arg-type]
        assert bad.value.code == "invalid"


async def test_bad_input_over_the_command_path_is_invalid_and_stores_nothing(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, Runtime(APP, journal) as rt:
        for args in ({"hold_for": "soon"}, {"hold_for": -5}, {"hold_for": 1e12}, {"hold_for": 4e7}):
            with pytest.raises(CommandError) as bad:
                await rt.ask("reservation", "r", "hold", {"sku": "A", "units": 1, **args})
            assert bad.value.code == "invalid", args
        assert await journal.last_position() == 0


# -- firing ----------------------------------------------------------------------------------------------


async def test_a_timer_fires_once_at_or_after_its_time(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, serving(journal, nats_server) as svc:
        await svc.runtime.ask("clock", "a", "set", {"name": "soon", "to": "b", "after": 0.3})
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        await svc.runtime.ask("clock", "a", "set_at", {"name": "past", "to": "b", "at": past.isoformat()})
        await eventually(lambda: _has(svc, "b", 2), what="both timers fired")
        events = await journal.read("clock", "b")
        set_events = {e.name: e for e in await journal.read("clock", "a") if e.name == SCHEDULED}
        assert len(set_events) == 1  # one stored name, two events: both are SCHEDULED
        due = {
            msgspec.json.decode(e.payload)["name"]: msgspec.json.decode(e.payload)["due"]
            for e in await journal.read("clock", "a")
            if e.name == SCHEDULED
        }
        for e in events:
            name = msgspec.json.decode(e.payload)["name"]
            assert e.recorded_at >= due[name], f"{name} fired early"
        assert {e.command_id for e in events} == {
            fire_command_id("clock", "a", "soon", 2),
            fire_command_id("clock", "a", "past", 4),
        }
        assert svc.timers is not None and svc.timers.fired == 2
        scraped = (await Metrics(svc).render()).decode()
        assert "memoir_timers_fired_total 2.0" in scraped and "memoir_timer_lateness_seconds_count 2.0" in scraped
        assert await pending_timers(journal, _nc(svc), prefix="memoir", entity_type="clock", entity_id="a") == []


async def test_cancel_and_replace_by_name(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, serving(journal, nats_server) as svc:
        await svc.runtime.ask("clock", "a", "set", {"name": "x", "to": "b", "after": 0.5})
        await svc.runtime.ask("clock", "a", "unset", {"name": "x"})
        await svc.runtime.ask("clock", "a", "set", {"name": "y", "to": "b", "after": 3600})
        await svc.runtime.ask("clock", "a", "set", {"name": "y", "to": "b", "after": 0.6})  # replaces the first y
        nc = _nc(svc)
        pending = await pending_timers(journal, nc, prefix="memoir", entity_type="clock", entity_id="a")
        assert [(t.name, t.generation) for t in pending] == [("y", 8)]
        await eventually(lambda: _has(svc, "b", 1), what="y fired")
        # x was due before y; y has fired, so x would have too had the cancel not removed it.
        await svc.runtime.ask("clock", "a", "set", {"name": "z", "to": "b", "after": 0})
        await eventually(lambda: _has(svc, "b", 2), what="z fired")
        assert await ticks(svc, "b") == ("y", "z")
        assert await pending_timers(journal, nc, prefix="memoir", entity_type="clock", entity_id="a") == []


async def test_a_recurring_timer_fires_each_interval_until_cancelled(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, serving(journal, nats_server) as svc:
        await svc.runtime.ask("clock", "a", "set", {"name": "beat", "to": "b", "every": 1})
        await eventually(lambda: _has(svc, "b", 2), what="two beats")
        await svc.runtime.ask("clock", "a", "unset", {"name": "beat"})
        ids = [e.command_id for e in await journal.read("clock", "b")]
        assert len(set(ids)) == len(ids)  # each firing its own command id


async def test_reservation_released_by_its_timer_and_paid_one_kept(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, serving(journal, nats_server) as svc:
        ask = svc.runtime.ask
        await ask("inventory", "SKU", "open", {"units": 10})
        await ask("reservation", "unpaid", "hold", {"sku": "SKU", "units": 3, "hold_for": 0.5})
        await ask("reservation", "paid", "hold", {"sku": "SKU", "units": 2, "hold_for": 0.5})
        await ask("reservation", "paid", "pay")

        async def released() -> bool:
            return (await ask("reservation", "unpaid", "get")).result.status == "released"

        await eventually(released, what="the unpaid reservation released")

        async def stock_is(n: int) -> bool:
            return (await ask("inventory", "SKU", "get")).result.units == n

        await eventually(lambda: stock_is(8), what="3 units back, 2 sold")
        assert (await ask("reservation", "paid", "get")).result.status == "paid"
        held = (await journal.read("reservation", "unpaid"))[0]
        gone = [e for e in await journal.read("reservation", "unpaid") if e.name == "Released"]
        assert len(gone) == 1 and gone[0].recorded_at >= msgspec.json.decode(held.payload)["until"]


async def _has(svc: Service, clock_id: str, n: int) -> bool:
    return len(await ticks(svc, clock_id)) >= n


def _nc(svc: Service) -> NATS:
    assert svc.nc is not None
    return svc.nc


def test_the_testkit_shows_what_a_command_scheduled_and_cancelled() -> None:
    kit = EntityTestKit(Reservation, "r1")
    held = kit.when("hold", sku="A", units=1, hold_for=60)
    (timer,) = held.timers
    assert isinstance(timer, TimerScheduled) and (timer.name, timer.to_type, timer.command) == (
        "expire",
        "reservation",
        "expire",
    )
    assert kit.when("pay").timers == [TimerCancelled(name="expire")]
    assert kit.when("hold", sku="A", units=1, hold_for=-1).error is not None


async def test_a_malformed_firing_is_parked_and_timers_keep_firing(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, serving(journal, nats_server) as svc:
        js = _nc(svc).jetstream()
        await js.publish("memoir.timers.fire.clock.a.junk", b'{"not": "a firing"}')
        await js.publish("memoir.timers.fire.clock.a.junk2", b"\xff\xfe")
        await svc.runtime.ask("clock", "a", "set", {"name": "ok", "to": "b", "after": 0})
        await eventually(lambda: _has(svc, "b", 1), what="a good timer fired after the bad ones")

        async def parked() -> bool:
            return svc.timers is not None and svc.timers.failed == 2

        await eventually(parked, what="both bad firings parked")
        dead = await js.stream_info("MEMOIR_DEADLETTER")
        assert dead.state.messages == 2
        assert (await js.stream_info("MEMOIR_TIMERS")).state.messages == 0  # acknowledged, gone


async def test_a_far_timer_due_while_the_runtime_is_down_fires_at_start_up(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TimerRelay, "horizon", 0.0)  # every timer is "far": a JetStream schedule
    async with SqliteJournal(tmp_path / "j.db") as journal:
        async with serving(journal, nats_server) as svc:
            await svc.runtime.ask("clock", "a", "set", {"name": "later", "to": "b", "after": 2.5})
            due = msgspec.json.decode((await journal.read("clock", "a"))[-1].payload)["due"]

            async def relayed() -> bool:
                pending = await pending_timers(journal, _nc(svc), prefix="memoir", entity_type="clock", entity_id="a")
                return await journal.load_checkpoint("timers") >= 2 and [t.name for t in pending] == ["later"]

            await eventually(relayed, what="the schedule handed to JetStream")
        while time.time_ns() < due + 300_000_000:  # down while it falls due (bounded: 2.8 s)
            await anyio.sleep(0.05)
        async with serving(journal, nats_server) as svc:
            await eventually(lambda: _has(svc, "b", 1), what="the overdue timer fired after the restart")
            (fired,) = await journal.read("clock", "b")
            assert fired.command_id == fire_command_id("clock", "a", "later", 2) and fired.recorded_at >= due
            assert svc.timers is not None and svc.timers.fired == 1  # fired by this start, from JetStream
