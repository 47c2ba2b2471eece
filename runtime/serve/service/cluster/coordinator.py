"""One process's place in a cluster: its buckets, its membership, its view of the leases.

`async with Cluster.join(nc, config) as cluster:` opens (or creates) the buckets, checks the
shard count, starts watching and acquires this member's lease (member_lease.py);
`announce()` starts heartbeating, so the others count this member; leaving the block leaves
the cluster and deletes the lease. A ShardManager (which announces) and any Singleton run on
top of it, both under that one lease.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from ....model.errors import ConfigError, MemoirError
from .allocation import AllocationTable
from .changes import Changes
from .leases import LeaseConfig, Leases
from .member_lease import MemberLease
from .membership import Membership, new_member_id
from .renewer import Connect, connect_like
from .shards import DEFAULT_SHARDS, SHARD_COUNT_KEY, check_shard_count, mismatch, shard_from_key
from .singleton import Singleton
from .singleton_placement import SpreadPlacement
from .store import Entry, bucket_name, describe, ensure_bucket, log, watch_forever


@dataclass(frozen=True)
class ClusterConfig:
    """name: the buckets' prefix (the subject prefix, say); replicas: as the streams' (3 on a
    three-node NATS cluster); lease_ttl bounds failover: a dead member's shards move after
    about one ttl; member_ttl (default: lease_ttl) is how long a silent member counts as live."""

    name: str = "memoir"
    shards: int = DEFAULT_SHARDS
    replicas: int = 1
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    member_ttl: float | None = None
    start_timeout: float = 30.0
    renew_on_thread: bool = True  # the member lease's renewal and the heartbeat on threads (renewer.py)
    spread_singletons: bool = True  # each singleton campaigned for first by its preferred member
    singleton_settle: float | None = None  # seconds a joiner is live before singletons move to it (lease ttl)

    def __post_init__(self) -> None:
        check_shard_count(self.shards)
        if not 1 <= self.replicas <= 5:
            raise ConfigError(f"cluster replicas must be between 1 and 5, got {self.replicas}")
        if self.singleton_settle is not None and self.singleton_settle < 0:
            raise ConfigError(f"singleton settle must not be negative, got {self.singleton_settle}")

    @property
    def members_ttl(self) -> float:
        return self.member_ttl if self.member_ttl is not None else self.lease.ttl

    @property
    def settle(self) -> float:
        return self.singleton_settle if self.singleton_settle is not None else self.lease.ttl


class Cluster:
    def __init__(self, nc: NATS, config: ClusterConfig, member_id: str, leases_kv: KeyValue, members_kv: KeyValue):
        self.nc = nc
        self.config = config
        self.member_id = member_id
        self.leases_kv = leases_kv
        self.members_kv = members_kv
        self.changes = Changes()  # any owner or member change: what the background loops wait on
        self.leases = Leases(leases_kv, member_id, config.lease, changes=self.changes)
        self.allocation = AllocationTable(leases_kv, config.shards, changes=self.changes)
        # the member lease's renewal and the heartbeat each on a thread with its own connection (renewer.py)
        self.connect: Connect | None = connect_like(nc, f"{member_id}-lease") if config.renew_on_thread else None
        self.membership = Membership(
            members_kv,
            member_id,
            ttl=config.members_ttl,
            bucket=bucket_name(config.name, "members"),
            connect=self.connect,
            alive=lambda: nc.is_connected,
            changes=self.changes,
        )
        self.lease = MemberLease(self.leases, bucket_name(config.name, "leases"), connect=self.connect, nc=nc)
        self.singletons: dict[str, Singleton] = {}
        self.placement = SpreadPlacement(member_id, self.membership.live, self.singletons.keys, settle=config.settle)
        self._tg: anyio.abc.TaskGroup | None = None
        self._announced = False

    @classmethod
    @asynccontextmanager
    async def join(
        cls,
        nc: NATS,
        config: ClusterConfig | None = None,
        *,
        member_id: str | None = None,
        meta: dict[str, str] | None = None,
    ) -> AsyncIterator[Cluster]:
        config = config or ClusterConfig()
        cluster = await cls.open(nc, config, member_id=member_id)
        cluster.membership.meta.update(meta or {})
        async with anyio.create_task_group() as tg:
            cluster._tg = tg
            with cluster._starting("join"):
                await tg.start(cluster.watch_leases)
                await tg.start(cluster.membership.watch)
                await tg.start(cluster.lease.run)
            try:
                yield cluster
            finally:
                await cluster.membership.leave()
                with anyio.CancelScope(shield=True):
                    await cluster.lease.stop()
                tg.cancel_scope.cancel()

    def _on_lease_entry(self, entry: Entry) -> None:
        if shard_from_key(entry.key) is not None:
            self.allocation.on_entry(entry)
        else:
            self.leases.on_entry(entry)

    async def watch_leases(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One watch on the leases bucket feeds both the leases (members', singletons') and the
        shard allocation; quiet for a whole ttl means a lost consumer (member leases renew more often)."""
        await watch_forever(
            self.leases_kv, self._on_lease_entry, quiet=self.config.lease.ttl, what="leases", task_status=task_status
        )

    @property
    def lease_running(self) -> bool:
        """Whether `join` holds the member lease (a cluster only `open`ed leaves it to its ShardManager)."""
        return self._tg is not None

    async def announce(self) -> None:
        """Start heartbeating: from now on the others count this member and move shards to it.

        Separate from `join`, so a starting process can follow the leases and run singletons,
        and be given shards only once it can serve them: a member seen before it takes commands
        stalls its shards' commands until their senders give up. The `ShardManager` announces
        on entry. Idempotent.
        """
        assert self._tg is not None, "announce() inside `async with Cluster.join(...)`"
        if not self._announced:
            self._announced = True
            with self._starting("announce this member to"):
                await self._tg.start(self.membership.heartbeat)

    @contextmanager
    def _starting(self, what: str) -> Iterator[None]:
        try:
            with anyio.fail_after(self.config.start_timeout):
                yield
        except TimeoutError:
            raise MemoirError(
                f"cannot {what} the cluster {self.config.name!r}: NATS KV did not answer within"
                f" {self.config.start_timeout:g} s"
            ) from None

    @classmethod
    async def open(cls, nc: NATS, config: ClusterConfig, *, member_id: str | None = None) -> Cluster:
        """The buckets, created if need be (retried through elections), and the shard count checked."""
        setup = nc.jetstream(timeout=5.0)  # creating a replicated bucket can take a few seconds
        leases, members = bucket_name(config.name, "leases"), bucket_name(config.name, "members")
        kv = await ensure_bucket(setup, leases, replicas=config.replicas, timeout=config.start_timeout)
        await ensure_bucket(
            setup,
            members,
            replicas=config.replicas,
            ttl=max(60.0, 10 * config.members_ttl),
            timeout=config.start_timeout,
        )
        await check_recorded_shards(kv, config.shards, config.start_timeout)
        # renewals and heartbeats use short request timeouts, so a retry fits before the deadline
        js = nc.jetstream(timeout=config.lease.request_timeout)
        leases_kv = await ensure_bucket(js, leases, replicas=config.replicas, timeout=config.start_timeout)
        members_kv = await ensure_bucket(js, members, replicas=config.replicas, timeout=config.start_timeout)
        return cls(nc, config, member_id or new_member_id(), leases_kv, members_kv)

    def singleton(self, name: str) -> Singleton:
        """The lease-backed runner for `name` (a publisher partition, a view, a consumer, a timer task).

        Ask for every singleton before running any (as `Service` does): placement balances over
        the names it knows, and every member should know the same ones."""
        if name not in self.singletons:
            placement = self.placement if self.config.spread_singletons else None
            self.singletons[name] = Singleton(self.lease, name, placement=placement, changes=self.changes)
        return self.singletons[name]


async def check_recorded_shards(kv: KeyValue, shards: int, timeout: float) -> None:
    """The first member records the count; every later one must match it."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            try:
                await kv.create(SHARD_COUNT_KEY, str(shards).encode())
                log.info("cluster shard count recorded", shards=shards)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                recorded = (await kv.get(SHARD_COUNT_KEY)).value or b""
        except Exception as exc:  # noqa: BLE001 - transient: retried
            last = describe(exc)
            await anyio.sleep(0.2)
            continue
        if int(recorded) != shards:
            raise mismatch(int(recorded), shards)
        return
    raise MemoirError(f"cannot read the cluster's shard count: {last}")
