"""Work that runs once in the cluster (a publisher partition, a view, a consumer, the timers),
held under the member's own lease as shards are.

A singleton's key (`singleton.<name>` in the leases bucket) names the member running it. It is
written once, when the singleton moves, and never renewed: it counts only while the lease
generation it was written under lives (member_lease.py). So running a dozen singletons costs a
member no KV writes beyond its own lease's three per ttl. Rules, as for a shard's entry
(placement.py):

- Take: a free key (never written, or deleted) is created; a key naming this member from an
  earlier lease generation is written again by compare-and-set; a key naming another member is
  taken only once that member's lease generation is gone (`MemberLease.gone`: deleted at a later
  revision than the key, after a ttl of silence as this member measured it, or released).
- Run: `work` runs while the generation lives; it is cancelled (and awaited) when the generation
  ends (the lease lapsed: its deadline passed without a renewal, which is before anyone can take
  the key), when another member wrote the key, or when placement hands it over.
- Hand over: `work` stops (it checkpoints as it stops), then the key is deleted with a revision
  check, so the preferred member, waiting on the key, takes it at once.

Failure cases are those of the member lease: a paused or partitioned member stops at its
deadline, before the others can fence its lease and take its singletons; a member that cannot
reach the bucket's leader keeps nothing past its deadline and nobody takes anything, since a take
is a write.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc
import structlog

from .changes import Changes
from .leases import Held, member_key
from .member_lease import Generation, MemberLease
from .store import describe

log = structlog.get_logger("memoir.cluster")


def singleton_key(name: str) -> str:
    return f"singleton.{name}"


class Placement(Protocol):
    """Who should run a singleton (singleton_placement.py): only that member campaigns at once."""

    def preferred(self, name: str) -> str | None:
        """The member that should run `name`; None: nobody can tell, so anyone campaigns at once."""
        ...

    def current(self) -> bool:
        """Whether this member's own view is fresh enough to hand a singleton over on."""
        ...


class Singleton:
    """Run `work` in exactly one process of the cluster at a time, failing over when its holder goes.

    `run` campaigns for the key, runs `work` while it holds it, cancels `work` (and waits for it)
    when it is lost, then campaigns again; cancelled, it stops `work` and releases the key.

    With a `placement`, only the preferred member campaigns at once; the others wait until the
    key has been vacant (released, or its holder's lease silent past its ttl) for a further ttl,
    so a singleton whose preferred member does not take it still runs somewhere. A holder whose
    view names another member hands over. A holder that took the singleton because its preferred
    member left it vacant never hands it back to that member (it may not run this singleton: a
    rolling upgrade), so nothing bounces.
    """

    def __init__(
        self,
        lease: MemberLease,
        name: str,
        *,
        on_acquired: Callable[[], Awaitable[None]] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
        placement: Placement | None = None,
        changes: Changes | None = None,
    ) -> None:
        self.lease = lease
        self.leases = lease.leases
        self.member = lease.member
        self.name = name
        self.key = singleton_key(name)
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.placement = placement
        self.changes = changes if changes is not None else self.leases.changes  # what `_watch` wakes on
        self.holding = False
        self.handovers = 0  # times this member gave the singleton to its preferred member
        self._not_to: str | None = None  # a preferred member that left it vacant: never handed to
        self._ttl = lease.config.ttl
        self._poll = self._ttl / 6
        # A member not preferred for this singleton, and a holder watching for a hand-over, look
        # less often: an idle member waits on a dozen singletons, and each look is a wake-up.
        # Failover is bounded by the vacancy rule (and the new preferred member's own campaign),
        # so this delays only a hand-over to a joiner or a standby's take, by at most ttl / 2.
        self._standby = self._ttl / 2
        self._stopped_at = float("-inf")  # monotonic: when this member last stopped holding it

    async def run(
        self,
        work: Callable[[], Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        while True:
            generation, held = await self._campaign()
            if await self._run_holding(generation, held, work):
                return

    def _preferred(self) -> str | None:
        return None if self.placement is None else self.placement.preferred(self.name)

    async def _campaign(self) -> tuple[Generation, Held]:
        """Until this member holds the key: at once if preferred, else once it has stayed vacant a ttl."""
        began = time.monotonic()
        while True:
            generation = await self.lease.generation()
            preferred = self._preferred()
            mine = preferred in (None, self.member)
            if mine or self._vacant_for(began) >= self._ttl:
                try:
                    held = await self._claim(generation)
                except Exception as exc:  # noqa: BLE001 - transient: retried
                    log.debug("singleton take failed; retrying", key=self.key, reason=describe(exc))
                    held = None
                if held is not None and not generation.ended.is_set():
                    self._not_to = preferred if preferred not in (None, self.member) else None
                    return generation, held
            if mine:
                await self.leases.wait_changed(self._poll)
            else:  # another member's to take: look again when it could have stayed vacant a ttl
                await anyio.sleep(min(self._standby, max(self._poll, self._ttl - self._vacant_for(began))))

    async def _claim(self, generation: Generation) -> Held | None:
        """One attempt to hold the key under `generation`; None while another member's lease holds it."""
        seen = self.leases.seen.get(self.key)
        if seen is not None and seen.owner == self.member and seen.revision > generation.since:
            return Held(self.key, seen.revision, time.monotonic(), time.time(), 0)  # ours already
        if seen is not None and seen.owner not in (None, self.member):
            alive = not await self.lease.gone(seen.owner, seen.revision)
            if alive:
                return None
        return await self.leases.write(self.key, seen)

    def _vacant_for(self, began: float) -> float:
        """How long the key has been free to take by this clock: released (or never written), or
        its holder's lease silent past its ttl (or gone)."""
        seen = self.leases.seen.get(self.key)
        now = time.monotonic()
        if seen is None:
            return now - began
        if seen.owner is None:
            return now - seen.since
        if seen.owner == self.member:  # ours until the watch shows the release; or our lease lapses
            return now - (self._stopped_at + self._ttl)
        lease = self.leases.seen.get(member_key(seen.owner))
        if lease is None or lease.owner is None:
            return now - (began if lease is None else max(lease.since, seen.since))
        return now - (lease.since + self._ttl)

    async def _watch(self, held: Held, work_scope: anyio.CancelScope) -> None:
        """Stop `work` once another member wrote the key, or this member's view prefers another
        member (the key is released after). Cancelled as soon as `work` ends, however it ends."""
        placement = self.placement
        while True:
            await self.changes.wait(self._standby)
            seen = self.leases.seen.get(self.key)
            if seen is None or seen.revision != held.revision:
                held.lost = True
                log.warning("singleton taken over", name=self.name, holder=self.member, by=seen and seen.owner)
                work_scope.cancel()
                return
            if placement is None:
                continue
            target = placement.preferred(self.name)
            if placement.current() and target not in (None, self.member, self._not_to):
                self.handovers += 1
                log.info("singleton handed over", name=self.name, holder=self.member, to=target)
                work_scope.cancel()
                return

    async def _run_holding(self, generation: Generation, held: Held, work: Callable[[], Awaitable[None]]) -> bool:
        """True when `work` finished by itself (the singleton is done)."""
        finished = False
        work_scope = anyio.CancelScope()

        async def lapse() -> None:
            await generation.ended.wait()
            held.lost = True
            log.warning("singleton stopped: the member lease lapsed", name=self.name, holder=self.member)
            work_scope.cancel()

        try:
            self.holding = True
            log.info("singleton acquired", name=self.name, holder=self.member)
            if self.on_acquired is not None:
                await self.on_acquired()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lapse)
                tg.start_soon(self._watch, held, work_scope)
                try:
                    with work_scope:
                        await work()
                        finished = True
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._stopped_at = time.monotonic()
            self.holding = False
            with anyio.CancelScope(shield=True):
                if self.on_lost is not None:
                    await self.on_lost()
                if not held.lost:
                    await self.leases.release(held)
        return finished
