"""Test workflows: a flaky step that is retried, a step that times out and fails over, a pause."""

from __future__ import annotations

import anyio
import msgspec

from runtime import Calls, Effect, Recovery, Run, StepEffect, Workflow, WorkflowSettings, command, step

FLAKY: dict[str, int] = {}  # workflow id -> failures left (process-local: tests run in one process)


class Steps(msgspec.Struct, frozen=True):
    counter: str = ""
    log: tuple[str, ...] = ()


class Flow(Workflow[Steps], name="flow"):
    initial = Steps()
    settings = WorkflowSettings(step_timeout=5.0, recovery=Recovery(max_retries=3, backoff=0.05, failover_to="undo"))

    @command
    def start(self, run: Run, counter: str, failures: int = 0, first: str = "count") -> Effect[str]:
        if failures < 0:
            return self.error("failures must be >= 0", code="invalid")
        FLAKY[self.entity_id] = failures
        return self.begin(run, Steps(counter=counter), first)

    @step
    async def count(self, s: Steps, calls: Calls) -> StepEffect:
        await calls.send("clock", s.counter, "tick", {"name": "count"})
        if FLAKY.get(self.entity_id, 0) > 0:  # fails after its effect landed: the retry must not double it
            FLAKY[self.entity_id] -= 1
            raise RuntimeError("flaky")
        return self.pause("after_pause", Steps(s.counter, (*s.log, "count")))

    @step
    async def after_pause(self, s: Steps, calls: Calls) -> StepEffect:
        await calls.send("clock", s.counter, "tick", {"name": "after_pause"})
        return self.end(Steps(s.counter, (*s.log, "after_pause")))

    @step(timeout=0.2, recovery=Recovery(max_retries=1, backoff=0.05, failover_to="undo"))
    async def slow(self, s: Steps, calls: Calls) -> StepEffect:
        await anyio.sleep(10)  # on purpose: longer than the step's timeout
        return self.end()

    @step
    async def undo(self, s: Steps, calls: Calls) -> StepEffect:
        await calls.send("clock", s.counter, "tick", {"name": "undo"})
        return self.end(Steps(s.counter, (*s.log, "undo")), failed="compensated")
