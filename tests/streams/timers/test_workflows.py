"""Workflows: event-sourced step machines over timers, calling entities with derived command ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from support.reading import journal_events
from support.waiting import eventually

from entities.bank import BANK, Account, Closed, SweepClosed, Transfer
from runtime import (
    App,
    Calls,
    CommandError,
    ConfigError,
    Context,
    Effect,
    Journal,
    Recovery,
    Run,
    Runtime,
    Service,
    SqliteJournal,
    StepEffect,
    Workflow,
    WorkflowSettings,
    command,
    history,
    model_of,
    on,
    step,
)
from runtime.model.timer_events import TimerCancelled, TimerScheduled
from runtime.model.workflow import MAX_STEPS_PER_TURN
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.timer_firing import entity_timers, timer_op
from streams.timers.clock import Clock
from streams.timers.flows import Flow

pytestmark = pytest.mark.anyio

APP = App("w", entities=[Account, Transfer, Flow, Clock])


@asynccontextmanager
async def serving(tmp_path: Path, server: EmbeddedNats) -> AsyncIterator[tuple[Service, Journal]]:
    async with SqliteJournal(tmp_path / "j.db") as journal, Service(APP, journal, nats_url=server.url) as svc:
        yield svc, journal


async def status(svc: Service, wf_type: str, wf_id: str) -> Any:
    return (await svc.runtime.ask(wf_type, wf_id, "get")).result


async def ended(svc: Service, wf_type: str, *ids: str) -> None:
    async def check() -> bool:
        for i in ids:
            if (await status(svc, wf_type, i)).status not in ("ended", "failed"):
                return False
        return True

    await eventually(check, what=f"{wf_type} {ids} ended")


async def balance(svc: Service, account: str) -> int:
    return int((await svc.runtime.ask("account", account, "get")).result.balance)


async def test_transfers_move_money_refund_a_refused_deposit_and_refuse_overdrafts(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    async with serving(tmp_path, nats_server) as (svc, journal):
        ask = svc.runtime.ask
        for acct in ("a", "b", "closed"):
            await ask("account", acct, "deposit", {"amount": 100})
        await ask("account", "closed", "close")
        assert (await ask("transfer", "t1", "start", {"source": "a", "target": "b", "amount": 30})).result == "running"
        again = await ask("transfer", "t1", "start", {"source": "a", "target": "b", "amount": 30})
        assert again.result == "running"  # the same id starts once
        await ask("transfer", "t2", "start", {"source": "a", "target": "closed", "amount": 20})
        await ask("transfer", "t3", "start", {"source": "b", "target": "a", "amount": 1_000})
        await ended(svc, "transfer", "t1", "t2", "t3")
        t1, t2, t3 = [await status(svc, "transfer", t) for t in ("t1", "t2", "t3")]
        assert (t1.status, t1.state.outcome) == ("ended", "done")
        assert (t2.status, t2.state.outcome) == ("ended", "refunded")
        assert [(h.step, h.outcome) for h in t2.history] == [
            ("withdraw", "completed"),
            ("deposit", "completed"),
            ("refund", "completed"),
        ]
        assert t3.status == "failed" and "insufficient funds" in t3.failed
        assert [await balance(svc, x) for x in ("a", "b", "closed")] == [70, 130, 100]
        # The workflow is an entity: its history is events, readable like any other.
        # One event per decision, each carrying the workflow's timer: the watchdog that runs the
        # step again if this process dies (`wake`), replaced by the next event, stopped by `Ended`.
        items = [item async for item in history(journal, model_of(Transfer), "t1")]
        assert [i.envelope.name for i in items] == ["Started", "StepCompleted", "Ended"]
        assert [i.event.wake > 0 for i in items] == [True, True, False]
        assert (items[-1].event.step, items[-1].event.failed) == ("deposit", None)  # the last step, folded in
        wake = timer_op(items[0].envelope, {"transfer"})  # what the relay reads: a timer like any other
        assert isinstance(wake, TimerScheduled)
        assert (wake.name, wake.to_type, wake.to_id, wake.command) == ("run", "transfer", "t1", "advance")
        assert isinstance(timer_op(items[-1].envelope, {"transfer"}), TimerCancelled)
        assert timer_op(items[0].envelope) is None  # not a workflow type: its events are only events
        assert await entity_timers(journal, "transfer", "t1", workflow=True) == {}  # ended: no timer left


async def test_a_bad_start_is_invalid_and_stores_nothing(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, Runtime(APP, journal) as rt:
        for args in (
            {"source": "a", "target": "b", "amount": -5},
            {"source": "a", "target": "a", "amount": 5},
            {"source": "a", "target": "b", "amount": "lots"},
            {"source": "a", "amount": 5},
            {"source": "a", "target": "b", "amount": 5, "extra": 1},
        ):
            with pytest.raises(CommandError) as bad:
                await rt.ask("transfer", "t", "start", args)
            assert bad.value.code == "invalid", args
        assert await journal.last_position() == 0


async def test_a_failing_step_is_retried_without_doubling_its_effect_then_pauses_and_resumes(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    async with serving(tmp_path, nats_server) as (svc, _journal):
        await svc.runtime.ask("flow", "f1", "start", {"counter": "c1", "failures": 2})

        async def paused() -> bool:
            return bool((await status(svc, "flow", "f1")).status == "paused")

        await eventually(paused, what="paused after the flaky step")
        s = await status(svc, "flow", "f1")
        assert [(h.step, h.attempt, h.outcome) for h in s.history] == [
            ("count", 1, "failed"),
            ("count", 2, "failed"),
            ("count", 3, "completed"),
        ]
        assert (await svc.runtime.ask("clock", "c1", "get")).result.ticks == ("count",)  # three runs, one effect
        with pytest.raises(CommandError):
            await svc.runtime.ask("flow", "other", "resume")  # never started: nothing to resume
        assert (await svc.runtime.ask("flow", "f1", "resume")).result == "running"
        await ended(svc, "flow", "f1")
        s = await status(svc, "flow", "f1")
        assert s.status == "ended" and s.state.log == ("count", "after_pause")
        assert (await svc.runtime.ask("clock", "c1", "get")).result.ticks == ("count", "after_pause")


async def test_a_step_that_times_out_is_retried_then_fails_over(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with serving(tmp_path, nats_server) as (svc, _journal):
        await svc.runtime.ask("flow", "f2", "start", {"counter": "c2", "first": "slow"})
        await ended(svc, "flow", "f2")
        s = await status(svc, "flow", "f2")
        assert s.status == "failed" and s.failed == "compensated"
        assert [(h.step, h.outcome) for h in s.history] == [
            ("slow", "failed"),
            ("slow", "failed"),
            ("slow", "failed over"),
            ("undo", "completed"),
        ]
        assert "timed out" in (s.history[0].detail or "")


def test_a_workflow_class_is_checked_when_defined() -> None:
    with pytest.raises(ConfigError, match="initial"):

        class NoState(Workflow[int], name="no_state"):
            @step
            async def only(self, s: int, calls: Calls) -> StepEffect:
                return self.end()

    with pytest.raises(ConfigError, match="failover step 'nowhere'"):

        class BadFailover(Workflow[int], name="bad_failover"):
            initial = 0
            settings = WorkflowSettings(recovery=Recovery(failover_to="nowhere"))

            @step
            async def only(self, s: int, calls: Calls) -> StepEffect:
                return self.end()


class SweepFailingOnce(SweepClosed, name="sweep_failing_once", sources=[Account]):
    """`SweepClosed`, failing each event's first delivery after it started the transfer: redelivered."""

    backoff = 0.05
    deliveries: ClassVar[Counter[str]] = Counter()

    @on
    async def closed(self, ctx: Context, e: Closed) -> None:
        await super().closed(ctx, e)
        self.deliveries[ctx.envelope.entity_id] += 1
        if self.deliveries[ctx.envelope.entity_id] == 1:
            raise RuntimeError("lost the ack after starting the transfer")


async def test_a_consumer_starts_a_workflow_once_per_event_even_when_the_event_is_redelivered(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    SweepFailingOnce.deliveries = Counter()
    app = App("sweep", entities=[Account, Transfer], consumers=[SweepFailingOnce])
    async with SqliteJournal(tmp_path / "j.db") as journal, Service(app, journal, nats_url=nats_server.url) as svc:
        ask = svc.runtime.ask
        for acct, amount in (("x", 70), ("y", 30)):
            await ask("account", acct, "deposit", {"amount": amount})
            await ask("account", acct, "close")  # seq 2: the transfer is close-{acct}-2
        await ended(svc, "transfer", "close-x-2", "close-y-2")
        await eventually(lambda: _true(min(SweepFailingOnce.deliveries.values(), default=0) >= 2), what="redelivery")
        assert [await balance(svc, a) for a in ("x", "y", BANK)] == [0, 0, 100]
        for acct in ("x", "y"):
            s = await status(svc, "transfer", f"close-{acct}-2")
            assert (s.status, s.state.outcome) == ("ended", "done")
        starts = [e for e in await journal_events(journal) if e.entity_type == "transfer" and e.name == "Started"]
        assert sorted(e.entity_id for e in starts) == ["close-x-2", "close-y-2"]  # two deliveries each, one start
        moves = [e for e in await journal_events(journal) if e.entity_type == "account" and e.name == "Withdrawn"]
        assert len(moves) == 2


async def _true(value: bool) -> bool:
    return value


class Loop(Workflow[int], name="loop"):
    """Twenty steps, each moving straight on to the next."""

    initial = 0

    @command
    def start(self, run: Run) -> Effect[str]:
        return self.begin(run, 0, "again")

    @step
    async def again(self, n: int, calls: Calls) -> StepEffect:
        return self.transition_to("again", n + 1) if n + 1 < 20 else self.end(n + 1)


async def test_steps_that_move_straight_on_are_recorded_a_turn_at_a_time(tmp_path: Path) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, Runtime([Loop], journal) as rt:
        await rt.ask("loop", "l1", "start")

        async def done() -> bool:
            return bool((await rt.ask("loop", "l1", "get")).result.status == "ended")

        await eventually(done, what="twenty steps")
        s = (await rt.ask("loop", "l1", "get")).result
        assert s.state == 20 and [h.attempt for h in s.history] == [1] * 20
        events = await journal.read("loop", "l1")
        assert [e.name for e in events] == ["Started"] + ["StepCompleted"] * 19 + ["Ended"]
        writes = Counter(e.recorded_at for e in events[1:])  # one write's events share their time
        assert sorted(writes.values()) == [20 - MAX_STEPS_PER_TURN, MAX_STEPS_PER_TURN]
