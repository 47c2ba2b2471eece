"""What `memoir cluster` shows: members, shards per member, lease ages, where singletons run.

Read straight from the buckets (one pass each), so it needs no membership of its own and
works from any process that can reach NATS. Ages come from the server's timestamps. A shard
counts as owned by the member its allocation entry names while that member's lease is in the
bucket (a lease fenced or released is deleted); its age is the age of that member lease.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio
import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS

from ....model.errors import MemoirError
from .allocation import decode as decode_allocation
from .coordinator import ClusterConfig
from .leases import decode, member_key
from .membership import MemberInfo
from .shards import SHARD_COUNT_KEY, shard_from_key
from .store import Entry, bucket_name, read_all


class MemberView(msgspec.Struct):
    id: str
    host: str
    pid: int
    up_s: float
    heartbeat_age_s: float
    shards: int


class LeaseView(msgspec.Struct):
    key: str
    owner: str
    age_s: float  # since its last renewal
    held_s: float  # since it was acquired


class ClusterSnapshot(msgspec.Struct):
    shard_count: int
    members: list[MemberView]
    shards_per_member: dict[str, list[int]]
    unowned_shards: list[int]
    singletons: dict[str, LeaseView]
    leases: list[LeaseView]

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def render(self) -> str:
        """The human table of `memoir cluster`."""
        lines = [f"shards: {self.shard_count}, unowned: {len(self.unowned_shards)}"]
        lines.extend(
            f"member {m.id} ({m.host} pid {m.pid}): {m.shards} shards, up {m.up_s:.0f} s, "
            f"heartbeat {m.heartbeat_age_s:.1f} s ago"
            for m in self.members
        )
        ages = [lease.age_s for lease in self.leases if lease.key.startswith("shard.")]
        if ages:
            lines.append(f"shard lease age: max {max(ages):.1f} s")
        for name, lease in sorted(self.singletons.items()):
            lines.append(f"singleton {name}: {lease.owner} (renewed {lease.age_s:.1f} s ago)")
        return "\n".join(lines)


def _age(entry: Entry, now: float) -> float:
    created: object = entry.created  # a datetime from a watch, whatever the annotation says
    return max(0.0, now - created.timestamp()) if isinstance(created, datetime) else 0.0


async def snapshot(nc: NATS, config: ClusterConfig | None = None) -> ClusterSnapshot:
    config = config or ClusterConfig()
    js = nc.jetstream(timeout=5.0)
    try:
        leases_kv = await js.key_value(bucket_name(config.name, "leases"))
        members_kv = await js.key_value(bucket_name(config.name, "members"))
    except nats.js.errors.BucketNotFoundError:
        raise MemoirError(
            f"no Memoir cluster with prefix {config.name!r} on this NATS (its KV buckets do not exist)"
        ) from None
    now = datetime.now(UTC).timestamp()
    wall = time.time()
    shard_count = config.shards
    leases: list[LeaseView] = []
    per_member: dict[str, list[int]] = {}
    singletons: dict[str, LeaseView] = {}
    claims: dict[str, LeaseView] = {}
    allocation: dict[int, str] = {}
    member_leases: dict[str, LeaseView] = {}
    for entry in await read_all(leases_kv):
        if entry.key == SHARD_COUNT_KEY:
            shard_count = int(entry.value or b"0")
            continue
        shard = shard_from_key(entry.key)
        if shard is not None:
            slot = decode_allocation(entry.value)
            if slot is not None and slot.owner:
                allocation[shard] = slot.owner
            continue
        value = decode(entry.value)
        if value is None:
            continue
        view = LeaseView(entry.key, value.owner, _age(entry, now), max(0.0, wall - value.acquired_at))
        if entry.key.startswith("singleton."):
            claims[entry.key.removeprefix("singleton.")] = view
        elif entry.key == member_key(value.owner):
            member_leases[value.owner] = view
    for name, claim in sorted(claims.items()):  # held under its holder's lease, as shards are
        lease = member_leases.get(claim.owner)
        if lease is not None:
            singletons[name] = LeaseView(claim.key, claim.owner, lease.age_s, claim.held_s)
            leases.append(singletons[name])
    for shard, holder in sorted(allocation.items()):
        lease = member_leases.get(holder)
        if lease is not None:
            per_member.setdefault(holder, []).append(shard)
            leases.append(LeaseView(f"shard.{shard:05d}", holder, lease.age_s, lease.held_s))
    leases.extend(member_leases.values())
    members: list[MemberView] = []
    for entry in await read_all(members_kv):
        try:
            info = msgspec.json.decode(entry.value or b"", type=MemberInfo)
        except msgspec.DecodeError:
            continue
        members.append(
            MemberView(
                info.id,
                info.host,
                info.pid,
                max(0.0, wall - info.started_at),
                _age(entry, now),
                len(per_member.get(info.id, [])),
            )
        )
    owned = {s for shards in per_member.values() for s in shards}
    return ClusterSnapshot(
        shard_count,
        sorted(members, key=lambda m: m.id),
        {m: sorted(s) for m, s in sorted(per_member.items())},
        [s for s in range(shard_count) if s not in owned],
        singletons,
        sorted(leases, key=lambda v: v.key),
    )


async def settled(nc: NATS, config: ClusterConfig, members: int, *, timeout: float = 30.0) -> ClusterSnapshot:
    """Wait until exactly `members` live members hold every shard between them (deploy scripts, tests).

    A member counts as live while its heartbeat is younger than the lease ttl.
    """
    deadline = time.monotonic() + timeout
    last = "no cluster yet"
    while time.monotonic() < deadline:
        try:
            snap = await snapshot(nc, config)
        except MemoirError as exc:  # no buckets yet: the first member is still starting
            last = str(exc)
        else:
            live = [m for m in snap.members if m.heartbeat_age_s < config.lease.ttl and m.shards]
            if len(live) == members and not snap.unowned_shards:
                return snap
            last = f"{len(live)} live members holding shards, {len(snap.unowned_shards)} shards unowned"
        await anyio.sleep(0.2)
    raise MemoirError(f"the cluster {config.name!r} did not settle on {members} members within {timeout:g}s: {last}")
