"""Where shards go (rendezvous hashing over live members) and the ShardManager that moves them.

Rendezvous (highest-random-weight) hashing: each member scores each shard by a hash of the
pair and the highest score wins. Every member computes the same answer from the same live
set, and a join or leave moves only the shards whose winner changed: about 1/n of them.

Ownership costs per member, not per shard. Each member holds one lease of its own
(`member.<id>`, member_lease.py: renewed every ttl/3 with a revision check) and the shard
allocation (allocation.py: one entry per shard naming its owner, with an epoch that grows on
every write) changes only when a shard moves. Idle, a member writes its lease and its
heartbeat: six KV writes per ttl whatever the shard count.

A member serves a shard while both hold:
- the allocation names it, by a write it made itself under its current lease (an entry
  naming it from an earlier lease, before a pause say, is taken again by compare-and-set);
- its own lease is within its deadline: the send time of its last successful renewal
  + ttl - margin, on its monotonic clock. The fence (`owns`, the runtime's `admits`) reads
  that deadline itself, so a member resumed after a pause refuses turns at once, whichever
  of its tasks runs first.

Moves, all by compare-and-set on the allocation entry's revision:
- Graceful (placement moved the shard, SIGTERM, leave): the owner stops admitting turns for
  it, passivates its actors (`on_release`), then writes the entry free; the member placement
  gives it to takes it at once by compare-and-set. Free rather than naming the successor:
  the successor is whoever wants it by its own view of the members, so two views that differ
  for a moment (the members and the leases are separate watches) never bounce a shard.
- Takeover: a member takes a shard from another only once the lease that member wrote the
  entry under is gone from the bucket: its key deleted at a later revision than the entry's
  (the entries live in the leases bucket, so one stream's revisions order them). It is gone
  when its holder released it, or when a taker saw it silent (the same revision) for a whole
  ttl on its own clock and deleted it with a revision check (`fence`).
  The deleted revision was the holder's last successful renewal, sent no later than it was
  committed, and the taker received it no earlier: the holder stopped by send + ttl - margin,
  before the taker's deletion at receipt + ttl. A holder's renewal racing the deletion is
  ordered by the server: either it lands first (the deletion fails, the holder is alive) or
  it fails (the holder stops at its deadline).

Failure cases:
- Paused owner (SIGSTOP, a long GC): its deadline passes while it sleeps; on resuming the fence
  refuses every turn before any task runs, its renewal fails against the fenced (deleted) key,
  it drops its shards and starts a new lease; allocations written before that lease began are
  not trusted: it takes them again by compare-and-set, or hands them over.
- Partitioned owner: it cannot renew, so it stops at its deadline; the others fence its lease
  a ttl after they last saw it change and take its shards. Healed, it is a new lease generation
  as above.
- Paused NATS leader of the bucket: nobody can write. Owners stop at their deadlines, nobody
  takes anything (a takeover is a write); when a leader answers again, members renew or start
  new leases and take their shards back. Unavailability, never two owners.
- A taker whose view of the leases lags its view of the allocation (the leases watch down during
  an election, an entry read directly after a lost compare-and-set): it fenced the owner's old
  lease, the owner started a new one and wrote its entries again, and the taker reads such an
  entry. The deletion it knows of comes before the entry, so it is an older lease's: the taker
  reads the key again, finds the new lease, and waits for it to go silent like any other.
  (Trusting "the lease is gone" from the taker's own fence made two owners, each of the owner's
  shards, in test_manager's NATS-leader kill under load.)
- Two members racing to take a shard: both compare-and-set the same entry revision; the server
  accepts one. Racing to fence the same lease: one deletion wins, the other sees it gone.
No clock is compared across machines: each side measures with its own monotonic clock, and
the journal's optimistic check stays the last guard.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import structlog

from .allocation import FREE, Slot
from .coordinator import Cluster
from .member_lease import Generation
from .store import describe

log = structlog.get_logger("memoir.cluster")

ShardCallback = Callable[[int], Awaitable[None]]
Clock = Callable[[], float]


def weight(member: str, shard: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{shard}".encode(), digest_size=8).digest(), "big")


def owner(shard: int, members: Iterable[str]) -> str | None:
    """The live member that should hold `shard`; None with no members."""
    return max(members, key=lambda m: (weight(m, shard), m), default=None)


def assign(shards: int, members: Iterable[str]) -> dict[str, list[int]]:
    members = sorted(set(members))
    out: dict[str, list[int]] = {m: [] for m in members}
    for shard in range(shards):
        winner = owner(shard, members)
        if winner is not None:
            out[winner].append(shard)
    return out


async def _nothing(shard: int) -> None:
    pass


class ShardManager:
    """`async with ShardManager(cluster, on_acquired=..., on_lost=...) as shards:` — holds this
    member's share of the shards until the block ends, then hands every one off.

    `clock` is the monotonic clock the fence reads (injectable for tests)."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        on_acquired: ShardCallback = _nothing,
        on_lost: ShardCallback = _nothing,
        on_release: ShardCallback | None = None,
        concurrency: int = 32,
        clock: Clock = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.member = cluster.member_id
        self.leases = cluster.leases
        self.lease = cluster.lease
        self.table = cluster.allocation
        self.membership = cluster.membership
        self.config = cluster.config.lease
        self.shards = cluster.config.shards
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.on_release = on_release if on_release is not None else on_lost
        self.clock = clock
        self._holding: dict[int, Slot] = {}
        self._busy: set[int] = set()  # a take or a hand-over in flight
        self._releasing: dict[int, anyio.Event] = {}
        self._placed: tuple[frozenset[str], frozenset[int]] | None = None  # (live, desired) cache
        self._limit = anyio.CapacityLimiter(concurrency)
        self._tg: anyio.abc.TaskGroup | None = None
        self._reconcile_scope = anyio.CancelScope()
        self._own_lease = False  # the cluster was opened, not joined: this manager runs the member lease
        self._stopped = False
        self.handoffs = 0  # shards freed for a successor
        self.losses = 0  # shards dropped because this member's lease lapsed or was fenced
        self.lease.on_lost(self._lease_lost)

    # -- what it holds ---------------------------------------------------------------------------

    @property
    def _lease(self) -> Generation | None:
        return self.lease.current

    def deadline(self) -> float:
        """Until when (this clock) this member may serve: its lease's deadline; -inf without one."""
        return self.lease.deadline()

    def serving(self) -> bool:
        return self.clock() < self.deadline()

    def held(self) -> frozenset[int]:
        return frozenset(self._holding)

    def owns(self, shard: int) -> bool:
        """The fence: the allocation gave us the shard and our lease is within its deadline now."""
        return shard in self._holding and self.serving()

    def epoch(self, shard: int) -> int | None:
        """The fencing token this member holds the shard at; None if it does not hold it."""
        slot = self._holding.get(shard)
        return slot.epoch if slot is not None else None

    def desired(self) -> frozenset[int]:
        live = self.membership.live()
        me = self.member
        if self._stopped:
            return frozenset()
        if me not in live:  # our own heartbeats fail: the view is stale, so change nothing
            return frozenset(self._holding)
        if self._placed is None or self._placed[0] != live:
            self._placed = (live, frozenset(s for s in range(self.shards) if owner(s, live) == me))
        return self._placed[1]

    def owner_of(self, shard: int) -> str | None:
        """Who the allocation names for the shard (for forwarding); None: nobody, or a member whose
        lease is gone (released or fenced: it serves nothing, and a taker is on its way)."""
        named = self.table.owner(shard)
        return named if named is not None and (named == self.member or self.lease.has_lease(named)) else None

    # -- running ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self.cluster.lease_running:
            await self.lease.generation()
        else:
            self._own_lease = True
            await self._tg.start(self.lease.run)
        await self.cluster.announce()  # placement counts this member from here on
        self._tg.start_soon(self._reconcile_forever)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.stop()
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(et, e, tb)

    async def _lease_lost(self) -> None:
        shards = list(self._holding)
        self._holding.clear()
        self.losses += len(shards)
        log.warning("member lease lost: shards dropped", member=self.member, shards=len(shards))
        for shard in shards:
            await self.on_lost(shard)

    async def stop(self) -> None:
        """Leave the membership (so the others stop counting this member), hand every shard to
        a successor (on_release, then its allocation entry written free); the member lease stays
        with the cluster (its singletons hang on it too), unless this manager started it."""
        if self._stopped:
            return
        self._stopped = True
        self._reconcile_scope.cancel()
        await self.membership.leave()
        async with anyio.create_task_group() as tg:
            for shard in list(self._holding):
                tg.start_soon(self._release, shard)
        for done in list(self._releasing.values()):
            await done.wait()
        if self._own_lease:
            await self.lease.stop()
        log.info("shards handed off", member=self.member)

    async def _reconcile_forever(self) -> None:
        poll = self.config.ttl / 6
        with self._reconcile_scope:
            while True:
                seen = self.cluster.changes.version
                try:
                    await self.reconcile()
                except Exception as exc:  # noqa: BLE001 - one bad round is logged; the next retries
                    log.warning("shard reconcile failed", reason=describe(exc))
                if self.cluster.changes.version == seen:  # else: changed during the round
                    # a lease, member or allocation change, or `poll` (silent leases and dead
                    # members show up by polling)
                    await self.cluster.changes.wait(poll)
                else:
                    await anyio.sleep(0.005)  # a busy cluster still lets the others run

    async def reconcile(self) -> None:
        """One round: drop what was taken from us, hand off what placement moved away, take or
        hand over what the allocation and placement disagree on."""
        assert self._tg is not None
        lease = self._lease
        if lease is None or not self.serving():
            return
        for shard, slot in list(self._holding.items()):
            now = self.table.slots.get(shard)
            if now is None or now.revision != slot.revision:  # written by another: we were fenced
                del self._holding[shard]
                self.losses += 1
                await self.on_lost(shard)
        await self.lease.fence_silent(self.membership.live())
        desired = self.desired()
        for shard in set(self._holding) - desired:
            self._tg.start_soon(self._release, shard)
        me, todo = self.member, []
        for shard in range(self.shards):
            if shard in self._holding or shard in self._releasing or shard in self._busy:
                continue
            entry = self.table.slots.get(shard)
            if shard in desired or (entry is not None and entry.owner == me):
                todo.append(shard)
        if todo:
            async with anyio.create_task_group() as tg:
                for shard in todo:
                    tg.start_soon(self._settle, shard, lease, shard in desired)

    async def _settle(self, shard: int, lease: Generation, wanted: bool) -> None:
        async with self._limit:
            if self._stopped or self._lease is not lease or shard in self._holding or shard in self._busy:
                return
            self._busy.add(shard)
            try:
                if wanted:
                    await self._take(shard, lease)
                else:
                    await self._hand_over(shard)
            except Exception as exc:  # noqa: BLE001 - transient: the next round retries
                log.debug("shard allocation write failed", shard=shard, reason=describe(exc))
            finally:
                self._busy.discard(shard)

    async def _take(self, shard: int, lease: Generation) -> None:
        me = self.member
        slot = self.table.slots.get(shard)
        if slot is not None and slot.owner == me and slot.revision > lease.since:
            got: Slot | None = slot  # ours, written under this lease
        else:
            if slot is not None and slot.owner not in (FREE, me):
                alive = not await self.lease.gone(slot.owner, slot.revision)
                if alive:
                    return  # its owner is alive: it hands the shard over when it sees placement moved
            got = await self.table.write(shard, me, by=me, last=slot)
        if got is None or self._lease is not lease or not self.serving() or self._stopped:
            return  # lost the race, or our lease lapsed meanwhile: a later round sorts it out
        self._holding[shard] = got
        await self.on_acquired(shard)

    async def _hand_over(self, shard: int) -> None:
        """Free an entry naming us that we do not serve (an older lease's) and placement gives elsewhere."""
        slot = self.table.slots.get(shard)
        if slot is not None and slot.owner == self.member:
            await self.table.write(shard, FREE, by=self.member, last=slot)

    async def _release(self, shard: int) -> None:
        slot = self._holding.pop(shard, None)
        if slot is None:
            return
        self._releasing[shard] = done = anyio.Event()
        started = time.monotonic()
        try:
            await self.on_release(shard)  # the fence already refuses; turns in flight finish
            with anyio.move_on_after(self.config.ttl):
                while True:
                    try:
                        if await self.table.write(shard, FREE, by=self.member, last=slot):
                            self.handoffs += 1
                        break
                    except Exception as exc:  # noqa: BLE001 - transient: retried (else it is fenced later)
                        log.debug("shard hand-off failed; retrying", shard=shard, reason=describe(exc))
                        await anyio.sleep(0.1)
            log.debug("shard released", shard=shard, seconds=round(time.monotonic() - started, 3))
        finally:
            del self._releasing[shard]
            done.set()
