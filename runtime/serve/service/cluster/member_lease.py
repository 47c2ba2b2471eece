"""A member's own lease (`member.<id>`): the one thing it renews, and what everything it runs hangs on.

Shards (placement.py) and singletons (leases.py, `Singleton`) are each named to a member by a KV
entry written once, when it moves, under the member's current lease *generation*: the lease as
acquired at one KV revision (`since`) and renewed since. Such an entry lets its member act only
while that generation lives; a taker may overwrite it only once the generation has ended (`gone`).
So what a member renews does not grow with what it holds: idle, it writes its lease three times
per ttl whether it holds one shard or a thousand, one singleton or twenty.

The lease is acquired when the member joins the cluster (before it is announced), so a starting
member can run singletons before it is given shards. When the lease lapses (its renewals failed
until the deadline, or another member fenced it), the generation ends: `lost` listeners drop what
they held, whoever waits on `Generation.ended` stops, and a new generation is acquired. Entries
written under the old one are not trusted: they are taken again by compare-and-set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog
from nats.aio.client import Client as NATS

from .leases import Held, LeaseConfig, Leases, member_key
from .renewer import Connect, ThreadRenewer
from .store import describe

log = structlog.get_logger("memoir.cluster")

OnLost = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Generation:
    """One generation of a member's lease: `since` is the KV revision it began at."""

    held: Held
    since: int
    ended: anyio.Event = field(default_factory=anyio.Event, compare=False)

    def deadline(self, config: LeaseConfig) -> float:
        return float("-inf") if self.held.lost else self.held.deadline(config)


class MemberLease:
    """This member's lease, renewed (on a thread of its own when `connect` is given) until `stop`."""

    def __init__(self, leases: Leases, bucket: str, *, connect: Connect | None, nc: NATS) -> None:
        self.leases = leases
        self.member = leases.holder
        self.config = leases.config
        self.key = member_key(self.member)
        self.bucket = bucket
        self.connect = connect
        self.nc = nc
        self.current: Generation | None = None
        self._listeners: list[OnLost] = []
        self._changed = anyio.Event()
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()
        self._running = False

    def on_lost(self, listener: OnLost) -> None:
        """Awaited (shielded) each time a generation ends by a lapse, before a new one is sought."""
        self._listeners.append(listener)

    def deadline(self) -> float:
        """Until when (monotonic) this member may act on what it holds; -inf without a live lease."""
        current = self.current
        return float("-inf") if current is None else current.deadline(self.config)

    def serving(self) -> bool:
        return time.monotonic() < self.deadline()

    async def generation(self) -> Generation:
        """The live generation, waiting for one (at start, or after a lapse) if need be."""
        while True:
            current = self.current
            if current is not None and not current.ended.is_set() and self.serving():
                return current
            await self._changed.wait()

    def _set(self, generation: Generation | None) -> None:
        old = self.current
        self.current = generation
        if old is not None:
            old.ended.set()
        self._changed.set()
        self._changed = anyio.Event()

    # -- others' leases ---------------------------------------------------------------------------

    def has_lease(self, member: str) -> bool:
        return self.leases.owner(member_key(member)) == member

    async def gone(self, owner: str, revision: int) -> bool:
        """Whether the lease `owner` wrote an entry under (at `revision`) has ended, so that nothing
        it holds acts on the entry: its key deleted (released, or fenced here after a ttl of
        silence) at a later revision than the entry's (entries live in the leases bucket, so its
        stream's revisions order them). A deletion before the entry ended an older lease: the owner
        wrote the entry under a newer one this view has not seen (the watch lags or is down, and the
        entry was read directly after a lost compare-and-set), so the key is read again first."""
        key = member_key(owner)
        seen = self.leases.seen.get(key)
        if seen is not None and seen.owner is not None and not await self.leases.fence(key):
            return False  # renewed within a ttl by this clock: alive
        seen = self.leases.seen.get(key)  # after a fence here: the fenced revision, before the deletion's
        if seen is None or seen.owner is not None or seen.revision <= revision:
            seen = await self.leases.refresh(key)
        return seen is None or (seen.owner is None and seen.revision > revision)

    async def fence_silent(self, live: frozenset[str]) -> None:
        """Delete the leases of members gone silent (killed ones), so the bucket does not keep a
        lease per process ever started and `memoir cluster` stops counting them."""
        for key, seen in list(self.leases.seen.items()):
            if key.startswith("member.") and seen.owner is not None and seen.owner not in live:
                try:
                    await self.leases.fence(key)
                except Exception as exc:  # noqa: BLE001 - transient: the next round retries
                    log.debug("lease fence failed", key=key, reason=describe(exc))

    # -- holding ----------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the lease until `stop`: started once the first generation is held."""
        self._running = True
        try:
            with self._scope:
                while True:
                    held = await self.leases.acquire(self.key)
                    self._set(Generation(held, held.revision))
                    log.info("member lease acquired", member=self.member, revision=held.revision)
                    task_status.started()
                    task_status = anyio.TASK_STATUS_IGNORED
                    await self._renew(held)
        finally:
            current = self.current
            if current is not None:
                current.ended.set()
            self._stopped.set()

    async def _renew(self, held: Held) -> None:
        """Until the lease lapses: on a thread of its own (renewer.py), or on this loop if that fails."""
        if self.connect is not None:
            nc = self.nc
            renewer = ThreadRenewer(self.leases, held, self.connect, self.bucket, lambda: nc.is_connected)
            await renewer.hold(self._lost)
            if renewer.error is None:
                return
            log.warning("lease renewal thread failed; renewing on the event loop", reason=describe(renewer.error))
            if held.lost:
                await self._lost()
                return
        await self.leases.hold(held, self._lost, fenced=True)

    async def _lost(self) -> None:
        generation = self.current
        if generation is not None:
            generation.ended.set()
        for listener in self._listeners:
            await listener()

    async def stop(self) -> None:
        """Stop renewing and delete the lease, so what it still names is free to take at once."""
        if not self._running:
            return
        self._scope.cancel()
        await self._stopped.wait()
        current = self.current
        if current is not None:
            await self.leases.release(current.held)
