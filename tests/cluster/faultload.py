"""Load for the fault tests, the ledger of every answer the senders got, and the checks of the
journal against it.

Eight senders send `receive` (one unit) to 24 inventory items, each command with its own id, resent
with the same id until it is answered. A phase is one `Ledger.load(...)` block: senders start when
it opens and finish the command in hand when it closes. The ledger keeps every ok reply (its seq
and result) and counts the failed attempts by kind (an error no fault explains, such as `rejected`,
fails the test at once); `check_journal` then asserts what the issue
asks of every fault: each acknowledged command stored exactly once, no id twice, seqs gapless,
and each reply's result equal to the fold of the entity's events at the reply's seq.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from support.reading import stream_messages
from support.waiting import eventually

from entities import InventoryItem
from runtime import Client, CommandError, ErrorCode, Journal, history
from runtime.model.entity import model_of
from runtime.wire.nats import close_quietly, connect
from runtime.wire.protocol import H_MSG_ID, event_headers, stream_name

ENTITIES = [f"F{k}" for k in range(24)]
SENDERS = 8
ATTEMPT = 5.0  # seconds a sender waits for one reply before resending (the Client's default)
GIVE_UP = 90.0  # a command still unanswered after this long fails the test
SLOW = 1.0  # a command answered later than this after its first send counts as held up by the fault
# What a fault may answer a `receive` with, to be resent with the same id. Any other error (the entity
# refusing, the payload refused) has no cause in this load: the test fails on it.
RETRYABLE = {ErrorCode.CONFLICT, ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL}


@dataclass(frozen=True)
class Ack:
    entity: str
    command_id: str
    seq: int
    result: Any
    at: float  # monotonic time of the answer


@dataclass
class Phase:
    """What the senders saw in one phase, for the assertions and for the record."""

    name: str
    acks: list[Ack] = field(default_factory=list)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)  # failed attempts, by kind
    longest_wait: float = 0.0  # the longest one command waited, from its first send to its answer
    slow: int = 0  # commands answered more than SLOW seconds after their first send
    recovery: float | None = None  # after the heal: until every entity had answered
    failed_sends: list[float] = field(default_factory=list)  # when each failed attempt was sent (monotonic)
    examples: dict[str, str] = field(default_factory=dict)  # the last message of each kind, to read the cause
    fault_at: float | None = None  # when the fault began and ended (monotonic), set by the test
    healed_at: float | None = None

    def longest_gap(self) -> float:
        """The longest any entity went between two acknowledged commands in this phase."""
        times: dict[str, list[float]] = collections.defaultdict(list)
        for ack in self.acks:
            times[ack.entity].append(ack.at)
        return max((b - a for ts in times.values() for a, b in itertools.pairwise(sorted(ts))), default=0.0)

    def summary(self) -> str:
        failed = ", ".join(f"{k} {n}" for k, n in sorted(self.failures.items())) or "none"
        recovery = "-" if self.recovery is None else f"{self.recovery:.2f}s"
        examples = "".join(f"; last {k}: {m}" for k, m in sorted(self.examples.items()))
        return (
            f"{self.name}: {len(self.acks)} acknowledged; failed attempts (all resent): {failed}{self._when()}; "
            f"{self.slow} waited over {SLOW:g}s, the longest {self.longest_wait:.2f}s; "
            f"longest per-entity gap {self.longest_gap():.2f}s; "
            f"every entity answering {recovery} after the heal{examples}"
        )

    def _when(self) -> str:
        """When the failed attempts were sent: during the fault (the last one counted from its start,
        which says how long the servers kept routing requests into it) or after the heal. A request
        held by a cut link that heals within the attempt's timeout is answered late, not failed:
        `slow` counts it."""
        if self.fault_at is None or self.healed_at is None or not self.failed_sends:
            return ""
        during = [t - self.fault_at for t in self.failed_sends if t < self.healed_at]
        after = len(self.failed_sends) - len(during)
        last = f", the last at {max(during):+.1f}s" if during else ""
        heal = self.healed_at - self.fault_at
        return f" ({len(during)} sent during the fault{last}; {after} after the heal at +{heal:.1f}s)"


@dataclass
class Ledger:
    phases: list[Phase] = field(default_factory=list)

    def acks(self, entity: str) -> list[Ack]:
        return [a for p in self.phases for a in p.acks if a.entity == entity]

    @contextlib.asynccontextmanager
    async def load(self, urls: list[str], prefix: str, name: str) -> AsyncIterator[Phase]:
        """Senders on `urls` (round robin) while the block runs; they finish the command in hand at its end."""
        phase = Phase(name)
        self.phases.append(phase)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for n in range(SENDERS):
                tg.start_soon(_sender, urls[n % len(urls)], prefix, f"{name}/s{n}", phase, stop)
            try:
                yield phase
            finally:
                stop.set()


async def _sender(url: str, prefix: str, name: str, phase: Phase, stop: anyio.Event) -> None:
    rnd = random.Random(name)
    async with Client(url, prefix=prefix) as client:
        for i in itertools.count():
            if stop.is_set():
                return
            entity = rnd.choice(ENTITIES)
            await _until_answered(client, phase, entity, f"{name}-{i}")


async def _until_answered(client: Client, phase: Phase, entity: str, cid: str) -> None:
    """Send, resending with the same id, until answered; every failed attempt is counted."""
    first = time.monotonic()
    with anyio.move_on_after(GIVE_UP):
        while True:
            sent = time.monotonic()
            try:
                reply = await client.send(
                    "inventory", entity, "receive", {"units": 1, "on": "2022-03-01"}, command_id=cid, timeout=ATTEMPT
                )
            except TimeoutError:
                phase.failures["timeout"] += 1
                phase.failed_sends.append(sent)
            except CommandError as exc:
                assert exc.code in RETRYABLE, f"{entity} receive {cid}: an unjustified {exc.code}: {exc}"
                phase.failures[str(exc.code)] += 1
                phase.failed_sends.append(sent)
                phase.examples[str(exc.code)] = f"{entity}: {exc}"[:300]
                await anyio.sleep(0.05)  # a pause before resending, not a wait for something
            else:
                now = time.monotonic()
                phase.longest_wait = max(phase.longest_wait, now - first)
                if now - first > SLOW:
                    phase.slow += 1
                phase.acks.append(Ack(entity, cid, reply.seq, reply.result, now))
                return
    raise AssertionError(f"{entity} receive {cid} unanswered for {GIVE_UP:g} s in phase {phase.name}")


async def every_entity_answers(url: str, prefix: str, within: float) -> float:
    """A `get` to every entity succeeds within `within` seconds (the silent ones asked again,
    1 s per try, until each has answered); returns how long that took, for the record."""
    started, silent = time.monotonic(), set(ENTITIES)
    async with Client(url, prefix=prefix) as client:
        last: dict[str, str] = {}

        async def ask(entity: str) -> None:
            try:
                await client.send("inventory", entity, "get", timeout=1.0)
            except (CommandError, TimeoutError) as exc:
                last[entity] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                silent.discard(entity)

        async def all_answered() -> bool:
            async with anyio.create_task_group() as tg:
                for entity in sorted(silent):
                    tg.start_soon(ask, entity)
            return not silent

        try:
            await eventually(all_answered, within, "every entity answering")
        except AssertionError:
            answers = {e: last.get(e) for e in sorted(silent)}
            raise AssertionError(f"silent {within:g} s after the heal, with their last answers: {answers}") from None
    return time.monotonic() - started


async def check_journal(journal: Journal, ledger: Ledger) -> set[str]:
    """Assert the journal against the ledger, entity by entity; returns the events checked, by the
    `Nats-Msg-Id` each has on a stream."""
    model = model_of(InventoryItem)
    checked: set[str] = set()
    for entity in ENTITIES:
        items = [item async for item in history(journal, model, entity)]
        seqs = [item.envelope.seq for item in items]
        assert seqs == list(range(1, len(items) + 1)), f"{entity}: seqs not gapless: {seqs}"
        ids = collections.Counter(item.envelope.command_id for item in items)
        twice = sorted(str(c) for c, n in ids.items() if n > 1)
        assert not twice, f"{entity}: command ids stored more than once: {twice[:10]}"
        acks = ledger.acks(entity)
        acked = {a.command_id for a in acks}
        lost = sorted(acked - set(ids))
        assert not lost, f"{entity}: acknowledged but not stored: {lost[:10]}"
        unasked = sorted(str(c) for c in set(ids) - acked)
        assert not unasked, f"{entity}: stored but never acknowledged: {unasked[:10]}"
        at = {item.envelope.command_id: item for item in items}
        for ack in acks:
            item = at[ack.command_id]
            assert ack.seq == item.envelope.seq, (
                f"{entity} {ack.command_id}: replied seq {ack.seq}, stored at {item.envelope.seq}"
            )
            assert ack.result == item.state.units, (
                f"{entity} {ack.command_id}: replied {ack.result}, the fold at seq {ack.seq} is {item.state.units}"
            )
        checked |= {event_headers(item.envelope)[H_MSG_ID] for item in items}
    return checked


async def outbox_caught_up(url: str, prefix: str, count: int, within: float = 30.0) -> None:
    """Wait until the outbox stream holds `count` inventory events: the publisher, a singleton the
    faults moved between members, has caught up (it must, before the members stop)."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        stream = stream_name(prefix, "inventory")

        async def caught_up() -> bool:
            return bool((await js.stream_info(stream)).state.messages >= count)

        await eventually(caught_up, within, f"{count} events in {stream}")
    finally:
        await close_quietly(nc)


async def check_outbox(url: str, prefix: str, expected: set[str]) -> None:
    """The outbox stream holds each stored inventory event exactly once (by its `Nats-Msg-Id`)."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        stream = stream_name(prefix, "inventory")
        ids = collections.Counter((m.headers or {}).get(H_MSG_ID) for m in await stream_messages(js, stream))
        twice = sorted(str(i) for i, n in ids.items() if n > 1)
        assert not twice, f"published twice: {twice[:10]}"
        assert set(ids) == expected, f"{stream} holds {len(ids)} events, the journal {len(expected)}"
    finally:
        await close_quietly(nc)
