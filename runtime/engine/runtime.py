"""The runtime: routes commands to entity actors, and keeps the set of live actors bounded.

Actors are virtual (as in Orleans): an entity is activated by its first
command, recovered from its latest snapshot plus the events after it, and
passivated when idle for `passivate_after` seconds or when more than
`max_live_actors` are live (least recently used first). Passivation only
drops memory: the entity comes back, identical, on its next command.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from ..journal import Journal
from ..model.access import Caller, Rule, authorize, rule_for
from ..model.app import App
from ..model.entity import EntityModel, EventSourcedEntity, model_of
from ..model.envelope import Snapshot
from ..model.errors import CommandError, ConfigError, EntityForgotten, ErrorCode, JournalError, SealError, Unavailable
from ..model.workflow import Workflow
from ..wire.protocol import Reply, check_entity_id
from .actor import Actor, ActorHost, CommandMeta
from .keyring import KeyRing, master_key_from_env
from .sender import Sender
from .workflows import Driver, step_calls

log = structlog.get_logger("memoir.runtime")


class Runtime:
    """Hosts an app's entities over a journal. Use as `async with Runtime(app, journal) as rt:`.

    The runtime does not open or close the journal: whoever built it owns it.
    """

    def __init__(
        self,
        app: App | Iterable[type[EventSourcedEntity[Any]]],
        journal: Journal,
        *,
        max_live_actors: int = 100_000,
        passivate_after: float | None = 300.0,
        mailbox_size: int = 256,
        dedupe_window: int = 256,
        admits: Callable[[str, str], bool] | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.app = app if isinstance(app, App) else App("app", entities=list(app))
        self.journal = journal
        if max_live_actors < 1 or mailbox_size < 1 or dedupe_window < 0:
            raise ConfigError("max_live_actors and mailbox_size must be >= 1, dedupe_window >= 0")
        self.max_live_actors = max_live_actors
        self.passivate_after = passivate_after
        self.mailbox_size = mailbox_size
        self.dedupe_window = dedupe_window
        self.models: dict[str, EntityModel] = {m.type_name: m for m in map(model_of, self.app.entities)}
        self.guards: dict[tuple[str, str], Rule | None] = {
            (t, c): rule_for(self.app.policy, t, c, spec.allow)
            for t, m in self.models.items()
            for c, spec in m.commands.items()
        }  # the rule guarding each command from outside (None: open)
        # Encrypted entity types keep their data keys beside the journal (master key: MEMOIR_MASTER_KEY).
        if keys is None and any(m.encrypted for m in self.models.values()):
            keys = KeyRing(journal.key_store(), master_key_from_env())
        self.keys = keys
        self.host = ActorHost(journal, mailbox_size, dedupe_window, self.offer_snapshot, admits, keys)
        self._live: OrderedDict[tuple[str, str], Actor] = OrderedDict()
        self._snapshots: MemoryObjectSendStream[Snapshot] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.snapshots_dropped = 0
        self._step_ask: Callable[..., Awaitable[Reply]] = self.ask  # how workflow steps send (see route_steps)
        # The workflow types: their events carry their timer (the relay reads it), their turns may kick a step.
        self.workflow_types = frozenset(t for t, m in self.models.items() if issubclass(m.cls, Workflow))
        self._driver = Driver(self.advance)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        send, receive = anyio.create_memory_object_stream[Snapshot](1024)
        tg = await stack.enter_async_context(anyio.create_task_group())
        # Exit runs these backwards: close the snapshot queue (the saver drains it and
        # returns), stop the passivation sweep, then wait for both in the task group.
        sweep = anyio.CancelScope()
        stack.callback(sweep.cancel)
        stack.push_async_callback(send.aclose)
        tg.start_soon(self._save_snapshots, receive)
        if self.workflow_types:
            driving = anyio.CancelScope()
            stack.callback(driving.cancel)
            tg.start_soon(self._driver.run, driving)
        if self.passivate_after is not None:
            tg.start_soon(self._sweep, sweep)
        self._snapshots = send
        self._stack = stack
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        self._snapshots = None
        if stack is not None:
            await stack.__aexit__(et, e, tb)

    # -- commands ----------------------------------------------------------------------------------

    def route_steps(self, sender: Sender) -> None:
        """Send the commands of workflow steps through `sender` rather than this runtime.

        A cluster's service passes its member sender (a step's target may live on another
        member); call it before the first command, as actors keep the sender they were bound to.
        """
        self._step_ask = sender.ask

    async def ask(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: bytes | Mapping[str, Any] | msgspec.Struct | None = None,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        deadline: float | None = None,
        caller: Caller | None = None,
    ) -> Reply:
        """Send one command and wait for its reply; raises `CommandError` with a wire error code.

        `deadline` (a `time.monotonic()` value) drops the command unrun if its turn comes later.
        `caller` is who sent it from outside (a front door passes `ANONYMOUS` for no token): the
        access rules are checked for it, before the payload is read. None means from inside the
        process (consumers, timers): trusted, and its events record no principal.
        """
        reply, moved = await self._ask(
            entity_type,
            entity_id,
            command,
            args,
            CommandMeta(command_id, correlation_id, causation_id, deadline, caller),
        )
        if moved:  # a workflow moved on to a step due now: run it without waiting for its timer
            self._driver.kick(entity_type, entity_id)
        return reply

    async def advance(self, workflow_type: str, workflow_id: str) -> bool:
        """Run a workflow's current step now; whether that moved it on to another step due now.

        The driver's path: it goes on with the same workflow while this says so, instead of
        queueing a kick per step.
        """
        _, moved = await self._ask(workflow_type, workflow_id, "advance", None, CommandMeta())
        return moved

    async def _ask(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: bytes | Mapping[str, Any] | msgspec.Struct | None,
        meta: CommandMeta,
    ) -> tuple[Reply, bool]:
        model = self.models.get(entity_type)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise CommandError(ErrorCode.UNKNOWN_ENTITY_TYPE, f"no entity type {entity_type!r} (known: {known})")
        check_entity_id(entity_id)
        spec = model.command_spec(command)
        if meta.caller is not None:
            authorize(self.guards[entity_type, command], meta.caller, entity_type, command)
        decoded = model.decode_args(spec, args)
        if self._stack is None:
            raise CommandError(ErrorCode.OVERLOADED, "the runtime is not running (stopped or not started)")
        actor = self._activate(model, entity_id)
        reply = await actor.ask(self.host, spec, decoded, meta)
        entity = actor.entity  # no await since the turn: this is that turn's kick
        return reply, isinstance(entity, Workflow) and entity.take_kick()

    async def forget(self, entity_type: str, entity_id: str) -> bool:
        """Forget an entity of an `encrypted=True` type: destroy its data key (crypto-shredding).

        Its events keep their seqs and positions but no payload of it can be read again, here or
        in any stream, export or backup; it answers every later command with `forgotten`. Runs
        after the turn in flight. Returns False if it was forgotten already (forgetting is idempotent).
        Views keep the rows they built until rebuilt; a rebuilt view holds nothing of the entity.
        """
        model = self.models.get(entity_type)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise CommandError(ErrorCode.UNKNOWN_ENTITY_TYPE, f"no entity type {entity_type!r} (known: {known})")
        check_entity_id(entity_id)
        if not model.encrypted:
            raise CommandError(
                ErrorCode.INVALID,
                f"entity type {entity_type!r} is not encrypted, so it cannot be forgotten"
                f" (declare it with encrypted=True, or delete the entity)",
            )
        if self._stack is None:
            raise CommandError(ErrorCode.OVERLOADED, "the runtime is not running (stopped or not started)")
        assert self.keys is not None  # built with the runtime when a type is encrypted
        actor = self._activate(model, entity_id)
        async with actor.lock:  # no recovery: an entity whose events no longer open can be forgotten too
            try:
                key = await self.keys.existing(entity_type, entity_id)
                head = await self.journal.head(entity_type, entity_id)
            except EntityForgotten:  # done before; complete it if it was interrupted
                await actor.forget(self.host)
                return False
            except (JournalError, SealError) as exc:
                code = ErrorCode.UNAVAILABLE if isinstance(exc, Unavailable) else ErrorCode.INTERNAL
                raise CommandError(code, f"cannot forget {entity_type}/{entity_id}: {exc}") from exc
            if key is None and head == 0:
                raise CommandError(ErrorCode.REJECTED, f"{entity_type}/{entity_id} has no events: nothing to forget")
            await actor.forget(self.host)
            return True

    def evict(self, entity_type: str, entity_id: str) -> None:
        """Drop an entity's cached key and live actor: another process forgot it (or changed it)."""
        if self.keys is not None:
            self.keys.evict(entity_type, entity_id)
        actor = self._live.get((entity_type, entity_id))
        if actor is not None and actor.idle:
            del self._live[(entity_type, entity_id)]
        elif actor is not None:
            actor.recovered = False  # reloaded, key included, before its next turn

    def _activate(self, model: EntityModel, entity_id: str) -> Actor:
        key = (model.type_name, entity_id)
        actor = self._live.get(key)
        if actor is None:
            actor = self._live[key] = Actor(model, entity_id)
            if isinstance(actor.entity, Workflow):  # its steps send commands through this runtime
                actor.entity.bind_calls(step_calls(self._step_ask, model.type_name, entity_id))
            if len(self._live) > self.max_live_actors:
                self._evict_one()
        else:
            self._live.move_to_end(key)
        return actor

    def _evict_one(self) -> None:
        """Passivate the least recently used idle actor; busy ones are skipped, never dropped."""
        for key, actor in self._live.items():
            if actor.idle:
                del self._live[key]
                return

    async def passivate_where(self, pick: Callable[[str, str], bool]) -> int:
        """Passivate the live actors `pick(type, id)` selects, each after its turn in flight.

        For a shard handed to another process: `admits` already refuses new turns, so once
        each picked actor's lock is free nothing of it runs here again. Returns how many went.
        """
        picked = [(key, actor) for key, actor in self._live.items() if pick(*key)]
        for key, actor in picked:
            async with actor.lock:  # queued senders go first; each finds the entity moved
                if self._live.get(key) is actor:
                    del self._live[key]
        return len(picked)

    @property
    def live_actors(self) -> int:
        return len(self._live)

    # -- passivation and snapshots -----------------------------------------------------------------

    async def _sweep(self, scope: anyio.CancelScope) -> None:
        assert self.passivate_after is not None
        every = min(max(self.passivate_after / 4, 0.05), 30.0)
        with scope:
            while True:
                await anyio.sleep(every)
                self._passivate_idle()

    def _passivate_idle(self) -> None:
        assert self.passivate_after is not None
        cutoff = time.monotonic() - self.passivate_after
        busy = []
        while self._live:
            key, actor = next(iter(self._live.items()))
            if actor.last_used > cutoff:
                break
            del self._live[key]
            if not actor.idle:
                busy.append((key, actor))
        for key, actor in busy:  # still in a turn: keep, at the young end
            self._live[key] = actor

    def offer_snapshot(self, snapshot: Snapshot) -> None:
        """Queue a snapshot to be saved off the command path; dropped if the saver is behind."""
        if self._snapshots is None:
            return
        try:
            self._snapshots.send_nowait(snapshot)
        except anyio.WouldBlock:
            self.snapshots_dropped += 1

    async def _save_snapshots(self, receive: anyio.abc.ObjectReceiveStream[Snapshot]) -> None:
        async with receive:
            async for snap in receive:
                try:
                    await self.journal.save_snapshot(snap)
                    await self.journal.delete_snapshots(snap.entity_type, snap.entity_id, snap.seq - 1)
                except Exception as exc:  # noqa: BLE001 - a snapshot is an optimization; never fatal
                    log.warning(
                        "snapshot not saved",
                        entity_type=snap.entity_type,
                        entity_id=snap.entity_id,
                        seq=snap.seq,
                        error=str(exc),
                    )
