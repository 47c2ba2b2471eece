"""The entity actor: one entity's state, its mailbox, and its turns.

A turn is: decide (the command handler) → apply (pure event handlers, on a copy
of the state) → append (the journal's optimistic check) → commit the new state
→ reply. The state is replaced only after the events are durable, so a failed
or refused write leaves the actor exactly as it was.

An actor owns no task. Its mailbox is the FIFO queue of senders waiting for
the turn lock, and a turn runs on the sender's task. That keeps idle actors
down to their state (a million live entities would otherwise mean a million
parked tasks), makes the mailbox bound a simple count, and lets a sender who
gives up while queued leave without a trace. A sender cancelled in the middle
of a write is the one hard case: the write may still land, so the actor marks
itself unrecovered and the next turn reloads from the journal.

Command ids: the actor remembers the last `dedupe_window` ids it stored, to answer
a repeat without I/O; the journal is the source of truth behind that cache. An
append carrying an id the entity already stored is refused by the journal with
`DuplicateCommand` (and the first reply comes back), and a repeat the handler
would now refuse is looked up in the journal before the refusal is sent.

The actor sees its runtime only through an `ActorHost`: the journal, the limits
and where to offer snapshots.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from ..journal.base import Journal
from ..model.access import Caller
from ..model.effect import Effect
from ..model.entity import CommandSpec, EntityModel
from ..model.envelope import Envelope, Snapshot, SnapshotBody
from ..model.errors import (
    CommandError,
    Conflict,
    DuplicateCommand,
    EntityDeleted,
    EntityForgotten,
    ErrorCode,
    JournalError,
    Moved,
    SealError,
    Unavailable,
)
from ..model.sealing import SealKey
from ..model.timer_events import encode_op, is_system, is_timer
from ..wire import tracing
from ..wire.protocol import Reply
from . import shredding
from .keyring import KeyRing, open_envelope, open_reply, open_snapshot, seal_envelope, seal_snapshot

log = structlog.get_logger("memoir.actor")


@dataclass(frozen=True, slots=True)
class ActorHost:
    """What an actor needs from whoever hosts it, and nothing more."""

    journal: Journal
    mailbox_size: int
    dedupe_window: int  # command ids remembered in memory per entity (the journal keeps them all)
    offer_snapshot: Callable[[Snapshot], None]
    admits: Callable[[str, str], bool] | None = None  # in a cluster: does this process own the entity now?
    keys: KeyRing | None = None  # the data keys of encrypted entity types


class CommandMeta(msgspec.Struct, frozen=True):
    command_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    deadline: float | None = None  # time.monotonic() after which the sender no longer waits
    caller: Caller | None = None  # who sent it (verified at the front door); None from inside the process


_snapshot_body = msgspec.json.Decoder(SnapshotBody)
_encoder = msgspec.json.Encoder()


class Actor:
    __slots__ = (
        "deleted",
        "entity",
        "entity_id",
        "forgotten",
        "key",
        "last_used",
        "lock",
        "model",
        "queued",
        "recovered",
        "replies",
        "seq",
        "since_snapshot",
        "state",
    )

    def __init__(self, model: EntityModel, entity_id: str) -> None:
        self.model = model
        self.entity_id = entity_id
        self.entity = model.cls(entity_id)
        self.state: Any = model.initial
        self.seq = 0
        self.recovered = False
        self.deleted = False
        self.forgotten = False
        self.key: SealKey | None = None  # the data key of an encrypted entity, once it has one
        self.lock = asyncio.Lock()  # FIFO: the mailbox
        self.queued = 0  # senders holding or waiting for the lock
        self.replies: OrderedDict[str, tuple[int, bytes | None]] = OrderedDict()
        self.last_used = time.monotonic()
        self.since_snapshot = 0

    @property
    def idle(self) -> bool:
        return self.queued == 0

    async def ask(self, host: ActorHost, spec: CommandSpec, args: Any, meta: CommandMeta) -> Reply:
        if self.queued >= host.mailbox_size:
            raise CommandError(
                ErrorCode.OVERLOADED,
                f"{self.model.type_name}/{self.entity_id}: mailbox full ({host.mailbox_size} commands queued)",
            )
        self.queued += 1
        try:
            async with self.lock:
                if tracing.tracer() is None or tracing.current() is None:  # off, or in no recorded trace
                    return await self._turn(host, spec, args, meta)
                attributes = {"memoir.entity_id": self.entity_id, "memoir.command": spec.name}
                with tracing.span(f"turn {self.model.type_name}.{spec.name}", attributes=attributes) as span:
                    before = self.seq
                    reply = await self._turn(host, spec, args, meta)
                    # the events it stored, by key: the spans reacting to them name them as parents
                    if span is not None:
                        keys = [f"{self.model.type_name}/{self.entity_id}/{s}" for s in range(before + 1, self.seq + 1)]
                        span.set_attribute("memoir.events", keys)
                    return reply
        finally:
            self.queued -= 1
            self.last_used = time.monotonic()

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, host: ActorHost) -> None:
        model = self.model
        try:
            rec = await host.journal.recover(model.type_name, self.entity_id)
            key = await shredding.existing_key(host.keys, model, self.entity_id) if model.encrypted else None
            state = model.initial
            replies: OrderedDict[str, tuple[int, bytes | None]] = OrderedDict()
            if rec.snapshot is not None:
                body = _snapshot_body.decode(open_snapshot(key, rec.snapshot).payload)
                state = model.state_decoder.decode(body.state)
                for cid, seq, data in body.replies:
                    replies[cid] = (seq, bytes(data))
            entity, fast, encrypted = self.entity, model.replayers, model.encrypted
            checks, state_type = model.checks_state, model.state_type
            superseded = _superseded(model, rec.events)
            for i, env in enumerate(rec.events):  # the hot loop of an activation: the common case in one lookup
                if encrypted:
                    env = open_envelope(key, env)
                hit = fast.get(env.name)
                if i < superseded:
                    pass  # a key-value entity's older state: only its command id matters
                elif hit is not None and hit[0] == env.version:
                    try:
                        new = hit[2](entity, state, hit[1](env.payload))
                        ok = not checks or isinstance(new, state_type)
                    except Exception:  # noqa: BLE001 - the general path below names what is wrong
                        ok = False
                    state = new if ok else model.apply(entity, state, model.codec.decode(env))
                elif not is_system(env.name):  # a timer: the entity's state does not fold it
                    state = model.apply(entity, state, model.codec.decode(env))
                if env.command_id is not None:
                    replies[env.command_id] = (env.seq, env.reply)
                    replies.move_to_end(env.command_id)
        except Unavailable as exc:
            raise CommandError(
                ErrorCode.UNAVAILABLE, f"cannot recover {model.type_name}/{self.entity_id}: {exc}; retry later"
            ) from exc
        except JournalError as exc:
            raise CommandError(ErrorCode.INTERNAL, f"cannot recover {model.type_name}/{self.entity_id}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise CommandError(
                ErrorCode.INTERNAL, f"cannot recover {model.type_name}/{self.entity_id}: bad snapshot: {exc}"
            ) from exc
        except EntityForgotten:
            self.state, self.seq, self.replies, self.key = model.initial, rec.head, OrderedDict(), None
            self.deleted = rec.deleted
            self.forgotten = self.recovered = True
            return
        except SealError as exc:
            raise CommandError(ErrorCode.INTERNAL, f"cannot recover {model.type_name}/{self.entity_id}: {exc}") from exc
        self.key = key
        while len(replies) > host.dedupe_window:
            replies.popitem(last=False)
        self.state, self.seq, self.replies = state, rec.head, replies
        self.deleted = rec.deleted
        self.since_snapshot = len(rec.events)
        self.recovered = True

    # -- the turn -------------------------------------------------------------------------------

    async def _turn(self, host: ActorHost, spec: CommandSpec, args: Any, meta: CommandMeta) -> Reply:
        model = self.model
        if host.admits is not None and not host.admits(model.type_name, self.entity_id):
            raise Moved(model.type_name, self.entity_id)  # checked inside the turn: no race with a hand-off
        if not self.recovered:
            await self.recover(host)
        if meta.deadline is not None and time.monotonic() > meta.deadline:
            raise CommandError(
                ErrorCode.OVERLOADED,
                f"{model.type_name}/{self.entity_id}: dropped unrun, its sender stopped waiting while it queued",
            )
        if self.deleted:
            raise CommandError(ErrorCode.REJECTED, f"{model.type_name}/{self.entity_id} was deleted")
        if self.forgotten:
            raise EntityForgotten(model.type_name, self.entity_id)
        cid = meta.command_id
        if cid is not None:
            seen = self.replies.get(cid)
            if seen is not None:
                return self._repeat(spec, *seen)

        try:
            effect = await self._decide(spec, args, meta.caller)
            if effect.error is not None:
                raise effect.error
        except CommandError:
            # A repeat that the moved-on state would now refuse still gets its first answer.
            stored = None if cid is None else await self._find_command(host, cid)
            if stored is None:
                raise
            return self._repeat(spec, *stored)
        try:
            state = model.fold(self.entity, self.state, effect.events, spec)
            result = effect.reply_for(state)
            envelopes = self._envelopes(effect, meta, model.encode_reply(result) if cid is not None else None)
        except CommandError:
            raise
        except Exception as exc:  # an event handler or the reply function failed
            raise self._internal(spec, exc) from exc

        if effect.forget_entity and not model.encrypted:
            raise self._internal(spec, TypeError(f"forget() needs {model.cls.__name__}(..., encrypted=True)"))
        if envelopes:
            if model.encrypted and self.key is None:
                self.key = await self._new_key(host)
            try:
                await self._append(host, envelopes)
            except DuplicateCommand as dup:  # beyond the in-memory window; nothing was stored
                reply = self._open_reply(dup.seq, dup.reply)
                self._remember(host, dup.command_id, dup.seq, reply)
                return self._repeat(spec, dup.seq, reply)
            self.state = state
            if cid is not None:
                self._remember(host, cid, self.seq, envelopes[-1].reply)
            self._maybe_snapshot(host, len(envelopes))
        if effect.delete_entity:
            try:
                await host.journal.delete(model.type_name, self.entity_id)
            except JournalError as exc:
                self.recovered = False
                code = ErrorCode.UNAVAILABLE if isinstance(exc, Unavailable) else ErrorCode.INTERNAL
                raise CommandError(code, f"{model.type_name}/{self.entity_id}: delete failed: {exc}") from exc
            self.deleted = True
        if effect.forget_entity or (effect.delete_entity and model.encrypted):
            # a deleted entity's rows may linger in free pages: their key must not
            await self.forget(host, signal=not effect.delete_entity)
        return Reply(result, self.seq)

    # -- crypto-shredding (the logic lives in shredding.py) -------------------------------------

    async def _new_key(self, host: ActorHost) -> SealKey:
        try:
            return await shredding.new_key(host.keys, self.model, self.entity_id)
        except EntityForgotten:
            self.forgotten = True
            raise

    async def forget(self, host: ActorHost, *, signal: bool = True) -> None:
        """Destroy the data key and the state in memory; run inside a turn (or holding the lock)."""
        ring = shredding.keys(host.keys, self.model)
        try:
            head = await shredding.forget(ring, host.journal, self.model.type_name, self.entity_id, signal=signal)
        except shredding.ForgetFailed:
            self.recovered = False  # the key may be gone or not: ask the store on the next turn
            raise
        self.state, self.key, self.replies, self.seq = self.model.initial, None, OrderedDict(), head
        self.forgotten = self.recovered = True

    def _open_reply(self, seq: int, data: bytes | None) -> bytes | None:
        try:
            return open_reply(self.key, self.model.type_name, self.entity_id, seq, data)
        except SealError as exc:
            raise CommandError(ErrorCode.INTERNAL, str(exc)) from exc

    def _repeat(self, spec: CommandSpec, seq: int, data: bytes | None) -> Reply:
        return Reply(None if data is None else self.model.decode_reply(spec, data), seq, duplicate=True)

    async def _find_command(self, host: ActorHost, cid: str) -> tuple[int, bytes | None] | None:
        try:
            found = await host.journal.find_command(self.model.type_name, self.entity_id, cid)
        except JournalError:
            return None  # the refusal stands; the caller learns nothing wrong from it
        return None if found is None else (found[0], self._open_reply(*found))

    async def _decide(self, spec: CommandSpec, args: Any, caller: Caller | None) -> Effect[Any]:
        self.entity.caller = caller  # `self.caller` in the handler: one turn at a time, so no race
        try:
            effect = self.model.decide(self.entity, self.state, spec, args)
            if spec.is_async:
                effect = await effect
        except CommandError:
            raise
        except Exception as exc:  # a handler bug answers one command, never kills the actor
            raise self._internal(spec, exc) from exc
        finally:
            self.entity.caller = None
        if not isinstance(effect, Effect):
            bad = self.model.not_an_effect(spec, effect)
            log.error("command handler failed", entity_type=self.model.type_name, command=spec.name, error=bad.message)
            raise bad
        return effect

    def _internal(self, spec: CommandSpec, exc: BaseException) -> CommandError:
        log.error(
            "command handler failed",
            entity_type=self.model.type_name,
            entity_id=self.entity_id,
            command=spec.name,
            exc_info=exc,
        )
        return CommandError(
            ErrorCode.INTERNAL, f"{self.model.type_name}.{spec.name} failed: {type(exc).__name__}: {exc}"
        )

    def _envelopes(self, effect: Effect[Any], meta: CommandMeta, reply: bytes | None) -> list[Envelope]:
        if not effect.events and not effect.timers:
            return []
        codec = self.model.codec
        now = time.time_ns()
        out = []
        stored = [(spec.name, spec.version, codec.encode(e)) for e in effect.events for spec in (codec.spec(e),)]
        stored += [(name, 1, data) for name, data in map(encode_op, effect.timers)]  # timers: the same batch
        last = len(stored) - 1
        principal = None if meta.caller is None else meta.caller.subject
        for i, (name, version, payload) in enumerate(stored):
            out.append(
                Envelope(
                    entity_type=self.model.type_name,
                    entity_id=self.entity_id,
                    seq=self.seq + 1 + i,
                    name=name,
                    version=version,
                    payload=payload,
                    recorded_at=now,
                    command_id=meta.command_id,
                    correlation_id=meta.correlation_id,
                    causation_id=meta.causation_id,
                    reply=reply if i == last else None,
                    principal=principal,
                )
            )
        return out

    async def _append(self, host: ActorHost, envelopes: list[Envelope]) -> None:
        where = f"{self.model.type_name}/{self.entity_id}"
        try:
            key = self.key  # timers stay in the clear: the relay reads them with no keys
            sealed = [e if key is None or is_timer(e.name) else seal_envelope(key, e) for e in envelopes]
            stored = await host.journal.append(sealed, self.seq)
        except Conflict as exc:
            self.recovered = False  # someone else wrote: reload before the next turn
            raise CommandError(ErrorCode.CONFLICT, _conflict(where, exc)) from exc
        except EntityDeleted as exc:
            self.deleted = True
            raise CommandError(ErrorCode.REJECTED, str(exc)) from exc
        except DuplicateCommand:
            raise
        except Unavailable as exc:
            self.recovered = False  # the write may or may not have landed
            raise CommandError(
                ErrorCode.UNAVAILABLE, f"{where}: {exc}; retry with the same command id", {"reason": exc.reason}
            ) from exc
        except JournalError as exc:
            self.recovered = False
            raise CommandError(ErrorCode.INTERNAL, f"{where}: journal write failed: {exc}") from exc
        except BaseException:
            self.recovered = False  # cancelled mid-write: it may have landed; reload to find out
            raise
        self.seq = stored[-1].seq

    def _remember(self, host: ActorHost, cid: str, seq: int, reply: bytes | None) -> None:
        self.replies[cid] = (seq, reply)
        if len(self.replies) > host.dedupe_window:
            self.replies.popitem(last=False)

    def _maybe_snapshot(self, host: ActorHost, appended: int) -> None:
        every = self.model.snapshot_every
        self.since_snapshot += appended
        if not every or self.since_snapshot < every:
            return
        self.since_snapshot = 0
        body = SnapshotBody(
            state=msgspec.Raw(self.model.state_encoder.encode(self.state)),
            replies=[(cid, seq, msgspec.Raw(r or b"null")) for cid, (seq, r) in self.replies.items()],
        )
        snap = Snapshot(
            entity_type=self.model.type_name,
            entity_id=self.entity_id,
            seq=self.seq,
            payload=_encoder.encode(body),
            recorded_at=time.time_ns(),
        )
        host.offer_snapshot(snap if self.key is None else seal_snapshot(self.key, snap))


def _superseded(model: EntityModel, events: list[Envelope]) -> int:
    """How many recovered events a newer one makes irrelevant to the state (a key-value entity's older states)."""
    if not model.last_wins:
        return 0
    return max((i for i, env in enumerate(events) if not is_timer(env.name)), default=0)


def _conflict(where: str, exc: Conflict) -> str:
    """Said once, with advice that fits whether or not the sender gave a command id: nothing was stored."""
    found = "" if exc.actual_seq is None else f", found {exc.actual_seq}"
    return (
        f"{where}: another writer stored events first (expected seq {exc.expected_seq}{found});"
        " nothing was stored: send the command again (with its command id, if it had one)"
    )
