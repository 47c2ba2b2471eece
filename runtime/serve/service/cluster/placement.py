"""Where shards go (rendezvous hashing over live members) and the ShardManager that moves them.

Rendezvous (highest-random-weight) hashing: each member scores each shard by a hash of the
pair and the highest score wins. Every member computes the same answer from the same live
set, and a join or leave moves only the shards whose winner changed: about 1/n of them.

The ShardManager holds the shards placement gives this member. It takes a shard once its
lease is free (released by the previous owner, or silent for a ttl) and hands off a shard
placement moves away: `on_release` is awaited (turns in flight finish, the actors go) and
only then is the lease deleted, so the successor starts after this member stopped. A lease
that cannot be renewed in time calls `on_lost` before anyone else can take it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import structlog

from .coordinator import Cluster
from .leases import Held
from .shards import shard_key
from .store import describe

log = structlog.get_logger("memoir.cluster")

ShardCallback = Callable[[int], Awaitable[None]]


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


@dataclass
class _Holding:
    held: Held
    scope: anyio.CancelScope
    stopped: anyio.Event


class ShardManager:
    """`async with ShardManager(cluster, on_acquired=..., on_lost=...) as shards:` — holds this
    member's share of the shards until the block ends, then hands every one off."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        on_acquired: ShardCallback = _nothing,
        on_lost: ShardCallback = _nothing,
        on_release: ShardCallback | None = None,
        concurrency: int = 32,
    ) -> None:
        self.cluster = cluster
        self.leases = cluster.leases
        self.membership = cluster.membership
        self.shards = cluster.config.shards
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.on_release = on_release if on_release is not None else on_lost
        self._holding: dict[int, _Holding] = {}
        self._taking: set[int] = set()
        self._releasing: dict[int, anyio.Event] = {}
        self._released: set[str] = set()  # keys handed off: not swept on stop
        self._limit = anyio.CapacityLimiter(concurrency)
        self._tg: anyio.abc.TaskGroup | None = None
        self._reconcile_scope = anyio.CancelScope()
        self._stopped = False
        self.handoffs = 0  # leases released to a successor
        self.losses = 0  # leases lost for want of renewal

    # -- what it holds ---------------------------------------------------------------------------

    def held(self) -> frozenset[int]:
        return frozenset(self._holding)

    def owns(self, shard: int) -> bool:
        return shard in self._holding

    def desired(self) -> frozenset[int]:
        live = self.membership.live()
        me = self.cluster.member_id
        if self._stopped:
            return frozenset()
        if me not in live:  # our own heartbeats fail: the view is stale, so change nothing
            return frozenset(self._holding)
        return frozenset(s for s in range(self.shards) if owner(s, live) == me)

    def owner_of(self, shard: int) -> str | None:
        """Who holds the shard's lease, as last seen (for forwarding); None: nobody."""
        return self.leases.owner(shard_key(shard))

    # -- running ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.cluster.announce()  # placement counts this member from here on
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
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

    async def stop(self) -> None:
        """Leave the membership (so the others start wanting these shards), then hand every
        shard off: on_release, then delete its lease."""
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
        await self._sweep()
        log.info("shards handed off", member=self.cluster.member_id)

    async def _sweep(self) -> None:
        """Delete leases that name this member though it never held them (a take cancelled after
        it committed), so their successors need not wait them out."""
        mine = [
            (key, seen.revision)
            for key, seen in list(self.leases.seen.items())
            if seen.owner == self.cluster.member_id and key.startswith("shard.") and key not in self._released
        ]
        if not mine:
            return
        async with anyio.create_task_group() as tg:
            for key, revision in mine:
                tg.start_soon(self._sweep_one, key, revision)

    async def _sweep_one(self, key: str, revision: int) -> None:
        with anyio.move_on_after(1):
            try:
                await self.leases.kv.delete(key, last=revision)
            except Exception as exc:  # noqa: BLE001 - then it expires by itself
                log.debug("lease sweep failed", key=key, reason=describe(exc))

    async def _reconcile_forever(self) -> None:
        poll = self.cluster.config.lease.ttl / 6
        with self._reconcile_scope:
            while True:
                seen = (self.leases.version, self.membership.version)
                try:
                    await self.reconcile()
                except Exception as exc:  # noqa: BLE001 - one bad round is logged; the next retries
                    log.warning("shard reconcile failed", reason=describe(exc))
                if (self.leases.version, self.membership.version) == seen:  # else: changed during the round
                    await self._wait_for_change(poll)
                else:
                    await anyio.sleep(0.005)  # a busy cluster still lets the others run

    async def _wait_for_change(self, timeout: float) -> None:
        """A lease or member change, or `timeout` (deaths and silent leases show up by polling)."""
        async with anyio.create_task_group() as tg:

            async def wait(waiter: Callable[[float], Awaitable[None]]) -> None:
                await waiter(timeout)
                tg.cancel_scope.cancel()

            tg.start_soon(wait, self.leases.wait_changed)
            tg.start_soon(wait, self.membership.wait_changed)

    async def reconcile(self) -> None:
        """One round: hand off what placement moved away, try to take what it gave us."""
        assert self._tg is not None
        desired = self.desired()
        for shard in set(self._holding) - desired:
            self._tg.start_soon(self._release, shard)
        wanted = sorted(desired - set(self._holding) - set(self._releasing) - self._taking)
        if wanted:
            async with anyio.create_task_group() as tg:
                for shard in wanted:
                    tg.start_soon(self._try_take, shard)

    async def _try_take(self, shard: int) -> None:
        assert self._tg is not None
        async with self._limit:
            if self._stopped or shard in self._holding or shard in self._releasing or shard in self._taking:
                return
            self._taking.add(shard)
            try:
                try:
                    held = await self.leases.try_take(shard_key(shard))
                except Exception as exc:  # noqa: BLE001 - transient: the next round retries
                    log.debug("shard take failed", shard=shard, reason=describe(exc))
                    return
                if held is None:
                    return
                self._released.discard(held.key)
                holding = _Holding(held, anyio.CancelScope(), anyio.Event())
                self._holding[shard] = holding
                self._tg.start_soon(self._hold, shard, holding)
                await self.on_acquired(shard)
            finally:
                self._taking.discard(shard)

    async def _hold(self, shard: int, holding: _Holding) -> None:
        async def lost() -> None:
            if self._holding.get(shard) is holding:
                del self._holding[shard]
            self.losses += 1
            await self.on_lost(shard)  # also when it was being released: stop now, whatever remains

        try:
            with holding.scope:
                await self.leases.hold(holding.held, lost)
        finally:
            holding.stopped.set()

    async def _release(self, shard: int) -> None:
        holding = self._holding.pop(shard, None)
        if holding is None:
            return
        self._releasing[shard] = done = anyio.Event()
        started = time.monotonic()
        try:
            await self.on_release(shard)  # renewals go on meanwhile: turns in flight finish under the lease
            holding.scope.cancel()
            await holding.stopped.wait()
            self._released.add(holding.held.key)
            if await self.leases.release(holding.held):
                self.handoffs += 1
            log.debug("shard released", shard=shard, seconds=round(time.monotonic() - started, 3))
        finally:
            del self._releasing[shard]
            done.set()
