"""Workflows: durable step machines, event-sourced like any entity (Akka SDK's Workflow is the model).

```python
class Transfer(Workflow[TransferState], name="transfer"):
    initial = TransferState()
    settings = WorkflowSettings(step_timeout=5.0, recovery=Recovery(max_retries=3, failover_to="refund"))

    @command
    def start(self, run: Run, source: str, target: str, amount: int) -> Effect[str]:
        return self.begin(run, TransferState(source, target, amount), "withdraw")

    @step
    async def withdraw(self, s: TransferState, calls: Calls) -> StepEffect:
        await calls.send("account", s.source, "withdraw", {"amount": s.amount})
        return self.transition_to("deposit")
```

A workflow *is* an entity type: its id is the caller's choice (starting twice with one id
starts once), its history is events (`Started`, `StepCompleted`, `StepFailed`,
`FailedOver`, `Paused`, `Resumed`, `Ended`), so `memoir events` and time travel work on it.

How it runs: every event a workflow writes also sets its own timer `run` (its `wake` field,
read by the timer relay as a `memoir.TimerScheduled` would be; 0 stops it), which fires the
built-in `advance` command. `advance` runs the current step inside the workflow's turn, with
the step's timeout, and the steps it moves straight on to, and records what came of them in
one write, the last event carrying the timer for the next move. A crash inside a step leaves
the firing unacknowledged, so it is redelivered after a restart and the step runs again; a
retry after a failure waits its backoff on the same timer. Exactly-once effects: the commands
a step sends carry ids derived from the workflow, the step and its visit (the same for every
retry and re-run of that visit), so a call that already landed is answered from the target's
command-id memory instead of running twice.

Steps run inside the workflow's turn, so a step must not send commands to its own workflow.
"""

# No `from __future__ import annotations` here: `Run` and friends are exported as `runtime.X`,
# and msgspec resolves string annotations in the module a class says it lives in.

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

import anyio
import msgspec

from . import effect as _effect
from .backoff import Backoff
from .effect import Effect
from .entity import EventSourcedEntity, applies, command
from .errors import CommandError, ConfigError, ErrorCode
from .timer_events import TimerCancelled, TimerOp, TimerScheduled

S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])

_STEP = "__memoir_step__"
WAKE = "run"  # the workflow's own timer that fires `advance`
ADVANCE = "advance"
WATCHDOG_GRACE = 1.0  # seconds past a step's timeout before its watchdog runs it again
MAX_HISTORY = 1000  # step records kept in the state (the journal keeps them all)
MAX_STEPS_PER_TURN = 16  # steps one `advance` runs and records in one write, each moving straight on


class Recovery(msgspec.Struct, frozen=True):
    """What a failing step does: retry `max_retries` times with backoff, then fail over (or end failed)."""

    max_retries: int = 0
    backoff: float = 0.2  # seconds before the first retry; doubles each time, up to `max_backoff`
    max_backoff: float = 30.0
    failover_to: str | None = None  # the step to go to once retries are spent; None: the workflow fails

    def delay(self, attempt: int) -> float:
        return Backoff(self.backoff, cap=self.max_backoff).at(attempt)


class WorkflowSettings(msgspec.Struct, frozen=True):
    """A workflow type's defaults for every step: its timeout and its recovery."""

    step_timeout: float = 30.0  # seconds a step may take (the default for every step)
    recovery: Recovery = Recovery()  # the default for every step


class StepSpec(msgspec.Struct, frozen=True):
    name: str
    timeout: float | None
    recovery: Recovery | None


@overload
def step(fn: F) -> F: ...
@overload
def step(
    *, name: str | None = None, timeout: float | None = None, recovery: Recovery | None = None
) -> Callable[[F], F]: ...
def step(
    fn: F | None = None, *, name: str | None = None, timeout: float | None = None, recovery: Recovery | None = None
) -> Any:
    """Mark an async method `(self, state, calls) -> StepEffect` as a step, optionally with its own settings."""

    def mark(f: F) -> F:
        if not inspect.iscoroutinefunction(f):
            raise ConfigError(f"step {f.__name__} must be an async method")
        setattr(f, _STEP, StepSpec(name or f.__name__, timeout, recovery))
        return f

    return mark if fn is None else mark(fn)


class StepEffect(msgspec.Struct, frozen=True):
    """What a step decided: the new state (or None to keep it), and what comes next."""

    then: str  # "step", "pause", "end"
    state: Any = None
    next_step: str | None = None
    failed: str | None = None  # on "end": why the workflow ended without success


class Calls(Protocol):
    """What a step can do: send commands, each with an id derived from the workflow, step and visit."""

    async def send(
        self, entity_type: str, entity_id: str, command: str, args: Mapping[str, Any] | msgspec.Struct | None = None
    ) -> Any:
        """The command's result; a refusal raises the typed CommandError (`Rejected`, …)."""
        ...


# -- the stored events ------------------------------------------------------------------------------


_NULL = msgspec.Raw(b"null")


class Started(msgspec.Struct, frozen=True):
    state: msgspec.Raw
    step: str
    wake: int = 0  # unix ns: when the workflow's timer runs the step (if nothing ran it before)


class StepCompleted(msgspec.Struct, frozen=True):
    step: str
    attempt: int
    state: msgspec.Raw  # JSON null: unchanged
    then: str  # "step" or "pause" (a step that ends the workflow is recorded as `Ended`)
    next_step: str | None = None
    wake: int = 0  # 0: no timer (paused)


class StepFailed(msgspec.Struct, frozen=True):
    step: str
    attempt: int
    error: str
    retry_in: float | None  # seconds; None: retries spent
    retry_at: int = 0  # unix ns: not retried before
    wake: int = 0  # the retry's time; 0: no timer (what follows in the same write sets one, or ends it)


class FailedOver(msgspec.Struct, frozen=True):
    step: str
    to_step: str
    wake: int = 0


class Resumed(msgspec.Struct, frozen=True):
    step: str
    wake: int = 0


class Ended(msgspec.Struct, frozen=True):
    failed: str | None = None
    # The step whose decision ended the workflow, when one did (its record and state, folded in):
    step: str | None = None
    attempt: int = 0
    state: msgspec.Raw = _NULL  # JSON null: unchanged
    wake: int = 0  # always 0: the workflow's timer stops


WORKFLOW_EVENTS = frozenset(c.__name__ for c in (Started, StepCompleted, StepFailed, FailedOver, Resumed, Ended))


class _Wake(msgspec.Struct):
    wake: int | None = None  # None: an event written before the timer was folded into the events


_wake_decoder = msgspec.json.Decoder(_Wake)


def wake_op(workflow_type: str, workflow_id: str, event_name: str, payload: bytes) -> TimerOp | None:
    """The timer operation a workflow's event carries: each one sets its timer `run` (or stops it).

    A workflow's own events *are* its timer (no `memoir.TimerScheduled` beside them): the
    generation is the event's seq, so a firing's command id is derived from it as for any timer.
    """
    if event_name not in WORKFLOW_EVENTS:
        return None
    wake = _wake_decoder.decode(payload).wake
    if wake is None:
        return None
    if wake == 0:
        return TimerCancelled(name=WAKE)
    return TimerScheduled(name=WAKE, due=wake, to_type=workflow_type, to_id=workflow_id, command=ADVANCE)


class StepRecord(msgspec.Struct, frozen=True):
    step: str
    attempt: int
    outcome: str  # "completed", "failed", "failed over", "resumed"
    detail: str | None = None


class Run(msgspec.Struct, frozen=True):
    """The state of any workflow as an entity: status, the user's state (JSON), where it is, its history."""

    status: str = "new"  # new, running, paused, ended, failed
    state: msgspec.Raw = _NULL  # the user's state as JSON; null: not started
    step: str | None = None  # the step to run next (or to resume at, when paused)
    attempt: int = 1  # the attempt of `step` to run next
    visit: int = 0  # how many steps were entered: with the step, the base of the command ids
    not_before: int = 0  # unix ns: a retry waits its backoff
    failed: str | None = None
    history: tuple[StepRecord, ...] = ()


class WorkflowStatus(msgspec.Struct, frozen=True):
    """The answer to `get`: the workflow's status, its state decoded, and its step history."""

    status: str
    state: Any
    step: str | None
    attempt: int
    failed: str | None
    history: tuple[StepRecord, ...]


_encoder = msgspec.json.Encoder()


def _unset(raw: msgspec.Raw) -> bool:
    return bytes(raw) in (b"null", b"")


def _record(run: Run, rec: StepRecord) -> tuple[StepRecord, ...]:
    history = (*run.history, rec)
    return history[-MAX_HISTORY:]


class Workflow(EventSourcedEntity[Run], Generic[S]):
    """Base class of a workflow type. Subclass with `name=`, set `initial` (the state), define steps."""

    initial: ClassVar[Any] = Run()
    initial_state: ClassVar[Any]
    settings: ClassVar[WorkflowSettings] = WorkflowSettings()
    steps: ClassVar[dict[str, tuple[Callable[..., Awaitable[StepEffect]], StepSpec]]]
    state_decoder: ClassVar[msgspec.json.Decoder[Any]]
    _calls: Callable[[str, int, int], Calls] | None = None
    _kick = False  # a turn moved it on to a step due now: the runtime may run it at once

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(name=name, **kwargs)
        own = cls.__dict__.get("initial")
        if own is not None and not isinstance(own, Run):
            cls.initial_state = own
            cls.initial = Run()
            cls.state_decoder = msgspec.json.Decoder(type(own))
        cls.steps = {}
        for attr in dir(cls):
            fn = getattr(cls, attr, None)
            spec = getattr(fn, _STEP, None)
            if isinstance(spec, StepSpec):
                cls.steps[spec.name] = (fn, spec)  # type: ignore[assignment]
        if cls.steps and not hasattr(cls, "initial_state"):
            raise ConfigError(f"{cls.__name__}: set `initial` to the workflow's initial state")
        failover = [s.recovery.failover_to for _, s in cls.steps.values() if s.recovery] + [
            cls.settings.recovery.failover_to
        ]
        for target in failover:
            if target is not None and cls.steps and target not in cls.steps:
                raise ConfigError(f"{cls.__name__}: failover step {target!r} is not a step")

    def bind_calls(self, calls: Callable[[str, int, int], Calls]) -> None:
        """Given by the runtime when the workflow is activated: how its steps send commands."""
        self._calls = calls

    # -- what a start command and a step return -----------------------------------------------------

    def begin(self, run: Run, state: S, first_step: str) -> Effect[str]:
        """Start at `first_step` with `state`; a workflow already started answers its status, unchanged."""
        if run.status != "new":
            return _effect.reply(run.status)
        if first_step not in self.steps:
            raise CommandError(ErrorCode.INTERNAL, f"{self.type_name}: no step {first_step!r}")
        started = Started(msgspec.Raw(_encoder.encode(state)), first_step, self._wake())
        return self.persist(started).reply(lambda r: r.status)

    @staticmethod
    def transition_to(next_step: str, state: Any = None) -> StepEffect:
        return StepEffect("step", state, next_step)

    @staticmethod
    def pause(resume_at: str, state: Any = None) -> StepEffect:
        """Stop here until the `resume` command; then go on at step `resume_at`."""
        return StepEffect("pause", state, resume_at)

    @staticmethod
    def end(state: Any = None, *, failed: str | None = None) -> StepEffect:
        return StepEffect("end", state, failed=failed)

    def _wake(self, after: float | None = None) -> int:
        """When the workflow's timer should run `advance`: after a retry's backoff, or (None) as a watchdog.

        The time goes into the event that records the move (`wake`), so the move and its timer are
        one event. A step due now is run at once by the runtime (`take_kick`), and the event that
        records it replaces the watchdog; the watchdog fires only if that never happens (a crash),
        a step timeout later, so a workflow always moves on.
        """
        self._kick = after is None
        if after is None:
            after = self.settings.step_timeout + WATCHDOG_GRACE
        return time.time_ns() + int(after * 1e9)

    def _stop(self) -> int:
        """No timer: the event stops the workflow's (paused or ended)."""
        self._kick = False
        return 0

    def take_kick(self) -> bool:
        """Whether the last turn moved on to a step due now (and forget it)."""
        kick, self._kick = self._kick, False
        return kick

    def _state(self, run: Run) -> Any:
        return self.initial_state if _unset(run.state) else self.state_decoder.decode(run.state)

    # -- the built-in commands ----------------------------------------------------------------------

    @command
    async def advance(self, run: Run) -> Effect[str]:
        """Run the current step, and the ones it moves straight on to; a stale firing changes nothing.

        Sent by the workflow's timer, or by the runtime as soon as a turn moves the workflow on.
        The steps a turn runs are recorded in one write: a crash before it runs them again, and
        their commands, with the same derived ids, land once.
        """
        if run.status != "running" or run.step is None or time.time_ns() < run.not_before:
            return _effect.reply(run.status)  # ended, paused, or a retry still waiting its backoff
        events: list[Any] = []
        budget = time.monotonic() + self.settings.step_timeout / 2  # well inside the watchdog
        for _ in range(MAX_STEPS_PER_TURN):
            decided = await self._run_step(run)
            events.extend(decided)
            for e in decided:
                run = self._fold(run, e)
            if not self._kick or time.monotonic() > budget:
                break  # paused, ended, a retry's backoff, or long enough: the timer or a kick goes on
        return self.persist(*events).reply(lambda r: r.status)

    async def _run_step(self, run: Run) -> tuple[Any, ...]:
        """Run the workflow's current step: the events that record what came of it."""
        name, attempt = run.step, run.attempt
        assert name is not None
        found = self.steps.get(name)
        if found is None:
            return self._end_failed(name, attempt, f"no step {name!r}")
        fn, spec = found
        timeout = spec.timeout if spec.timeout is not None else self.settings.step_timeout
        recovery = spec.recovery or self.settings.recovery
        if self._calls is None:
            raise CommandError(ErrorCode.INTERNAL, f"{self.type_name}: steps need a runtime to send commands")
        calls = self._calls(name, run.visit, attempt)
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                outcome = await fn(self, self._state(run), calls)
            if scope.cancelled_caught:
                raise TimeoutError
            if not isinstance(outcome, StepEffect):
                raise TypeError(f"step {name} returned {type(outcome).__name__}, not a StepEffect")
            if outcome.then == "step" and outcome.next_step not in self.steps:
                raise ConfigError(f"step {name} moved to {outcome.next_step!r}, which is not a step")
        except Exception as exc:  # noqa: BLE001 - a failing step is retried, failed over, or ends the workflow
            error = "step timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            return self._failed(name, attempt, error, recovery)
        state = msgspec.Raw(_encoder.encode(outcome.state))  # None: JSON null, the state unchanged
        if outcome.then == "end":  # the step's record and the end, one event
            return (Ended(outcome.failed, name, attempt, state, self._stop()),)
        wake = self._wake() if outcome.then == "step" else self._stop()
        return (StepCompleted(name, attempt, state, outcome.then, outcome.next_step, wake),)

    def _failed(self, name: str, attempt: int, error: str, recovery: Recovery) -> tuple[Any, ...]:
        if attempt <= recovery.max_retries:
            delay = recovery.delay(attempt)
            wake = self._wake(after=delay)
            return (StepFailed(name, attempt, error, delay, wake, wake),)
        target = recovery.failover_to
        if target is not None and target != name:
            return StepFailed(name, attempt, error, None), FailedOver(name, target, self._wake())
        return self._end_failed(name, attempt, error)

    def _end_failed(self, name: str, attempt: int, error: str) -> tuple[Any, ...]:
        return StepFailed(name, attempt, error, None), Ended(f"{name}: {error}", wake=self._stop())

    def _fold(self, run: Run, e: Any) -> Run:
        """The run after one of the events `advance` decided (the runtime folds them again once stored)."""
        if isinstance(e, StepCompleted):
            return self._step_completed(run, e)
        if isinstance(e, StepFailed):
            return self._step_failed(run, e)
        if isinstance(e, FailedOver):
            return self._failed_over(run, e)
        if isinstance(e, Ended):
            return self._ended(run, e)
        raise TypeError(f"advance does not decide {type(e).__name__}")

    @command
    def resume(self, run: Run) -> Effect[str]:
        """Go on with a paused workflow at the step its pause named."""
        if run.status != "paused" or run.step is None:
            return self.error(f"{self.type_name}/{self.entity_id} is {run.status}, not paused")
        return self.persist(Resumed(run.step, self._wake())).reply(lambda r: r.status)

    @command
    def get(self, run: Run) -> Effect[WorkflowStatus]:
        """The workflow's status, state and step history."""
        return _effect.reply(
            WorkflowStatus(run.status, self._state(run), run.step, run.attempt, run.failed, run.history)
        )

    # -- how the events change the run ---------------------------------------------------------------

    @applies
    def _started(self, run: Run, e: Started) -> Run:
        return Run(status="running", state=e.state, step=e.step, attempt=1, visit=1)

    @applies
    def _step_completed(self, run: Run, e: StepCompleted) -> Run:
        state = run.state if _unset(e.state) else e.state
        history = _record(run, StepRecord(e.step, e.attempt, "completed", e.next_step))
        if e.then == "step":
            return msgspec.structs.replace(
                run, state=state, step=e.next_step, attempt=1, visit=run.visit + 1, history=history
            )
        if e.then == "pause":
            return msgspec.structs.replace(run, status="paused", state=state, step=e.next_step, history=history)
        return msgspec.structs.replace(run, state=state, step=None, history=history)

    @applies
    def _step_failed(self, run: Run, e: StepFailed) -> Run:
        history = _record(run, StepRecord(e.step, e.attempt, "failed", e.error))
        return msgspec.structs.replace(run, attempt=e.attempt + 1, not_before=e.retry_at, history=history)

    @applies
    def _failed_over(self, run: Run, e: FailedOver) -> Run:
        history = _record(run, StepRecord(e.step, run.attempt - 1, "failed over", e.to_step))
        return msgspec.structs.replace(run, step=e.to_step, attempt=1, visit=run.visit + 1, history=history)

    @applies
    def _resumed(self, run: Run, e: Resumed) -> Run:
        history = _record(run, StepRecord(e.step, run.attempt, "resumed"))
        return msgspec.structs.replace(run, status="running", step=e.step, visit=run.visit + 1, history=history)

    @applies
    def _ended(self, run: Run, e: Ended) -> Run:
        status = "ended" if e.failed is None else "failed"
        if e.step is None:  # after a StepFailed that spent the retries (or an older journal's StepCompleted)
            return msgspec.structs.replace(run, status=status, step=None, failed=e.failed)
        state = run.state if _unset(e.state) else e.state
        history = _record(run, StepRecord(e.step, e.attempt, "completed", None))
        return msgspec.structs.replace(run, status=status, state=state, step=None, failed=e.failed, history=history)


def step_command_id(workflow_type: str, workflow_id: str, visit: int, step_name: str, n: int) -> str:
    """The id of the `n`th command a step sends in its `visit`: the same on every retry and re-run."""
    base = f"wf:{workflow_type}/{workflow_id}/{visit}/{step_name}"
    return base if n == 1 else f"{base}#{n}"
