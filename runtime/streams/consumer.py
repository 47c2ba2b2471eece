"""Consumers: code that reacts to one entity type's events by sending commands to others.

```python
class CountPosts(Consumer, name="count_posts", sources=[Post]):
    @on
    async def published(self, ctx: Context, e: Published) -> None:
        await ctx.send("profile", e.author, "count_post")
```

Delivery is at-least-once; exactly-once *effects* come from command ids: every
command a handler sends carries the source event's id (`{type}/{id}/{seq}`,
suffixed `#2`, `#3` … for a second command to the same entity), so the target
entity persists it once however often the event is redelivered.

A refusal is not a failure. `ctx.send` raises `CommandError` for any error reply;
its `code` tells the two kinds apart (`is_refusal`):

- a refusal (`rejected`, `invalid`, `unknown_command`, `forbidden`, `forgotten`, or
  an entity's own code such as `not_found`) is the target's answer. The same command
  gets the same answer, so it is never retried: catch it on `ctx.send` and record the
  outcome (the event is then acked like any handled one). A refusal the handler lets
  escape is parked at once, without retries.
- a busy target (`overloaded`, `unavailable`, `conflict`) says nothing about the event:
  it is retried with backoff (the message is nak'ed with a delay, capped at `max_backoff`,
  and the ones behind it go on) for as long as the target stays busy, never parked. A
  thousand events sent to one entity at once fill its mailbox; parking them would lose
  their effects to an operator's replay.
- any other failure (`internal`, a timeout, a bug in the handler) is retried the same
  way, and after `max_attempts` deliveries it is parked.

Events of one source entity are handled in order, different entities concurrently.
Parked events go to `{prefix}.deadletter.{consumer}` with the error in `Memoir-Error`
and are acked, so one poisonous event never stalls the stream. Per-entity order holds
except across such retries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from ..engine.keyring import KeyRing
from ..engine.sender import Sender
from ..model.backoff import Backoff
from ..model.envelope import Envelope
from ..model.errors import CommandError, ErrorCode
from ..model.sealing import is_sealed
from ..wire import tracing
from ..wire.protocol import Reply, envelope_from_message, stream_prefix
from ._runner import StreamResolver, StreamRunner
from .handlers import HandlerTable, Subscriber
from .publisher import StreamSettings, ensure_stream_config

log = structlog.get_logger("memoir.consumer")


class Context:
    """What a consumer handler can do: send commands, attributed to the event being handled.

    They go through the member's `Sender`, which reaches the target's owner wherever it is.
    """

    def __init__(self, sender: Sender, envelope: Envelope) -> None:
        self.sender = sender
        self.envelope = envelope
        self._sent: dict[tuple[str, str], int] = {}

    async def send(
        self, entity_type: str, entity_id: str, command: str, args: Mapping[str, Any] | msgspec.Struct | None = None
    ) -> Reply:
        command_id, correlation_id, causation_id = self.next_ids(entity_type, entity_id)
        return await self.sender.ask(
            entity_type,
            entity_id,
            command,
            args,
            command_id=command_id,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )

    def next_ids(self, entity_type: str, entity_id: str) -> tuple[str, str, str]:
        """The next command's (command id, correlation id, causation id), derived from the event.

        One place for the rule, so `ConsumerTestKit` records the ids the runtime would send.
        """
        env = self.envelope
        n = self._sent[(entity_type, entity_id)] = self._sent.get((entity_type, entity_id), 0) + 1
        return env.key if n == 1 else f"{env.key}#{n}", env.correlation_id or env.key, env.key


class Consumer(Subscriber):
    """Base class of a consumer. Subclass with `name=` and `sources=[EntityClass, ...]`.

    A handler catches `CommandError` on `ctx.send` to react to a refusal (see the module
    docstring); a busy target is retried until it takes the command; other errors it lets
    escape are retried until `max_attempts` deliveries, then parked.
    """

    kind = "consumer"
    max_attempts: ClassVar[int] = 5
    backoff: ClassVar[float] = 0.2  # seconds before the first retry; doubles each time
    max_backoff: ClassVar[float] = 30.0  # the longest wait between two retries


BUSY = frozenset({ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.CONFLICT})
"""The target could not take the command now: retried for as long as that lasts, never parked."""

TRANSIENT = BUSY | {ErrorCode.INTERNAL}
"""Error codes that may clear on a retry with the same command id; every other code is an answer."""


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` says only that the target could not take the command now."""
    return isinstance(exc, CommandError) and exc.code in BUSY


def is_refusal(exc: BaseException) -> bool:
    """Whether `exc` is the target entity's deterministic answer (retrying gets the same one)."""
    return isinstance(exc, CommandError) and exc.code not in TRANSIENT


def dead_letter_subject(prefix: str, consumer: str) -> str:
    return f"{prefix}.deadletter.{consumer}"


async def ensure_dead_letter_stream(js: Any, prefix: str, settings: StreamSettings) -> None:
    """Parked events are kept in `{PREFIX}_DEADLETTER`, so nothing is lost while nobody listens."""
    name = f"{stream_prefix(prefix)}_DEADLETTER"
    await ensure_stream_config(js, settings.config_for(name, [f"{prefix}.deadletter.>"]))


class ConsumerRunner(StreamRunner):
    """Runs one consumer: explicit acks, retries with backoff, dead letters; never stalls behind a failure."""

    def __init__(
        self,
        consumer: type[Consumer],
        sender: Sender,
        nc: NATS,
        *,
        prefix: str,
        streams: StreamResolver | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.table = consumer.table()
        super().__init__(consumer.name, self.table.sources, nc, prefix=prefix, streams=streams)
        self.consumer = consumer
        self.instance = consumer()
        self.sender = sender  # the runtime alone; in a cluster, the member's router to each owner
        self.keys = keys  # to open the events of encrypted types
        self.handled = 0
        self.retried = 0
        self.dead_lettered = 0
        self.refused = 0  # uncaught refusals, parked without retries (also counted in dead_lettered)
        self.forgotten = 0  # events skipped because their entity was forgotten

    def pull_options(self, entity_type: str) -> dict[str, Any]:
        return {
            "handle": self._handle_batch,
            "ack_policy": api.AckPolicy.EXPLICIT,
            "batch": 100,
            "max_ack_pending": 1000,
        }

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        """Events of one source entity in order; different entities concurrently."""
        by_entity: dict[str, list[Msg]] = {}
        for msg in msgs:
            by_entity.setdefault(msg.subject, []).append(msg)
        async with anyio.create_task_group() as tg:
            for group in by_entity.values():
                tg.start_soon(self._handle_in_order, group)

    async def _handle_in_order(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered or 1
        try:
            if not await self.react(envelope_from_message(msg.subject, msg.headers, msg.data)):
                await msg.ack()
                return
        except Exception as exc:  # noqa: BLE001 - a failing handler is retried, then parked; never fatal
            if is_refusal(exc):  # a refusal the handler did not catch: a retry would get the same answer
                self.refused += 1
                await self._dead_letter(msg, exc)
                return
            if attempt < self.consumer.max_attempts or is_busy(exc):
                self.retried += 1
                delay = Backoff(self.consumer.backoff, cap=self.consumer.max_backoff).at(attempt)
                log.warning(
                    "consumer handler failed; will retry",
                    consumer=self.consumer.name,
                    subject=msg.subject,
                    attempt=attempt,
                    retry_in=delay,
                    error=str(exc),
                )
                await msg.nak(delay=delay)
                return
            await self._dead_letter(msg, exc)
            return
        self.handled += 1
        await msg.ack()

    async def react(self, env: Envelope) -> bool:
        """Run the event's handler (if any); False when its entity was forgotten (nothing to react to).

        Also how a parked event is replayed: its commands carry the ids derived from the event,
        as the first time, so an effect that happened then does not happen twice. Traced, in a
        span that continues the trace of the command that stored the event.
        """
        if tracing.tracer() is None:
            return await self._react(env)
        with tracing.reaction(f"consume {self.consumer.name} {env.name}", env.correlation_id, env.key):
            return await self._react(env)

    async def _react(self, env: Envelope) -> bool:
        readable = await self.table.readable(env, self.keys) if is_sealed(env.payload) else env
        if readable is None:
            log.info("forgotten event skipped by consumer", consumer=self.consumer.name, envelope=env.key)
            self.forgotten += 1
            return False
        found = self.table.decode(readable)
        if found is not None:
            event, handler = found
            await HandlerTable.call(handler, self.instance, Context(self.sender, readable), event, readable)
        return True

    async def _dead_letter(self, msg: Msg, exc: Exception) -> None:
        # the event's own headers, minus the server's publish controls (dedup id, expectations, atomic batch)
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line: header values cannot break
        headers["Memoir-Error"] = reason[:1000].encode("ascii", "replace").decode()
        headers["Memoir-Original-Subject"] = msg.subject
        await self.js.publish(dead_letter_subject(self.prefix, self.consumer.name), msg.data, headers=headers)
        await msg.ack()
        self.dead_lettered += 1
        log.error(
            "event parked on the dead-letter subject", consumer=self.consumer.name, subject=msg.subject, error=str(exc)
        )
