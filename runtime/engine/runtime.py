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
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from ..journal import Journal
from ..model.app import App
from ..model.entity import EntityModel, EventSourcedEntity, model_of
from ..model.envelope import Snapshot
from ..model.errors import CommandError, ConfigError, ErrorCode
from ..wire.protocol import Reply, check_entity_id
from .actor import Actor, ActorHost, CommandMeta

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
    ) -> None:
        self.app = app if isinstance(app, App) else App("app", entities=list(app))
        self.journal = journal
        if max_live_actors < 1 or mailbox_size < 1 or dedupe_window < 0:
            raise ConfigError("max_live_actors and mailbox_size must be >= 1, dedupe_window >= 0")
        self.max_live_actors = max_live_actors
        self.passivate_after = passivate_after
        self.mailbox_size = mailbox_size
        self.dedupe_window = dedupe_window
        self.host = ActorHost(journal, mailbox_size, dedupe_window, self.offer_snapshot, admits)
        self.models: dict[str, EntityModel] = {m.type_name: m for m in map(model_of, self.app.entities)}
        self._live: OrderedDict[tuple[str, str], Actor] = OrderedDict()
        self._snapshots: MemoryObjectSendStream[Snapshot] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.snapshots_dropped = 0

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
    ) -> Reply:
        """Send one command and wait for its reply; raises `CommandError` with a wire error code.

        `deadline` (a `time.monotonic()` value) drops the command unrun if its turn comes later.
        """
        model = self.models.get(entity_type)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise CommandError(ErrorCode.UNKNOWN_ENTITY_TYPE, f"no entity type {entity_type!r} (known: {known})")
        check_entity_id(entity_id)
        spec = model.command_spec(command)
        decoded = model.decode_args(spec, args)
        if self._stack is None:
            raise CommandError(ErrorCode.OVERLOADED, "the runtime is not running (stopped or not started)")
        actor = self._activate(model, entity_id)
        return await actor.ask(
            self.host, spec, decoded, CommandMeta(command_id, correlation_id, causation_id, deadline)
        )

    def _activate(self, model: EntityModel, entity_id: str) -> Actor:
        key = (model.type_name, entity_id)
        actor = self._live.get(key)
        if actor is None:
            actor = self._live[key] = Actor(model, entity_id)
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
