"""The cluster's shard map as a client follows it, so a command goes straight to its owner.

A member serves, besides the shared `{prefix}.cmd.…` subjects (one queue group: any member
takes a command and forwards it to the owner), a subject of its own,
`{prefix}.cmd.@{member}.{type}.{id}.{command}`. A client that knows the shard allocation
(the `shard.NNNNN` entries of the `{prefix}_leases` KV bucket, hashed as the members hash,
`cluster/shards.py`) sends there and skips the hop. Nothing here is trusted: the member runs
the command only while it owns the entity and forwards it otherwise, so a stale map costs a
hop, never a wrong answer. A member that is gone answers "no responders" at once; the client
forgets it (until the allocation names it again) and resends the same command id to the shared
subject. The map is kept by a JetStream ordered consumer with a callback (no task of ours to
stop); without JetStream or the bucket (no cluster, a client not allowed to read it) there
is no map and every command takes the shared subject, as any NATS client's does.
"""

from __future__ import annotations

import contextlib
from typing import Any

import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import DeliverPolicy

from .cluster.allocation import decode
from .cluster.shards import SHARD_COUNT_KEY, shard_from_key, shard_of

log = structlog.get_logger("memoir.client")

DIRECT_MARK = "@"  # `{prefix}.cmd.@{member}.…`: no entity type starts with it


def direct_subject(prefix: str, member: str, command_subject: str) -> str:
    """`{prefix}.cmd.…` addressed to `member`: `{prefix}.cmd.@{member}.…`."""
    head = f"{prefix}.cmd."
    return f"{head}{DIRECT_MARK}{member}.{command_subject[len(head) :]}"


class ShardMap:
    """Shard -> owner, as the allocation names it (epochs order the updates); members gone are skipped."""

    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards
        self.owners: dict[int, tuple[str, int]] = {}  # shard -> (member, epoch)
        self.gone: set[str] = set()  # answered "no responders": skipped until the allocation names them again
        self.updates = 0
        self.fallbacks = 0  # commands resent to the shared subject: their member had gone
        self._sub: Any = None

    @classmethod
    async def follow(cls, nc: NATS, prefix: str, timeout: float = 1.0) -> ShardMap | None:
        """The map of the cluster serving `prefix`, kept current; None where there is none to follow.

        A NATS user not allowed JetStream gets no answer at all (a permissions violation), so the
        look-up is bounded by `timeout`: that long is what such a client's start costs."""
        bucket = f"{prefix}_leases"
        try:
            js = nc.jetstream(timeout=timeout)
            kv = await js.key_value(bucket)
            shards = int((await kv.get(SHARD_COUNT_KEY)).value or b"")
            found = cls(prefix, shards)
            found._sub = await js.subscribe(
                f"$KV.{bucket}.shard.>",
                cb=found._on_msg,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            )
        except (NatsError, nats.js.errors.Error, ValueError, TimeoutError) as exc:
            log.debug("no shard map: commands take the shared subject", prefix=prefix, reason=repr(exc))
            return None
        return found

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(NatsError, nats.js.errors.Error):
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        shard = shard_from_key(msg.subject.split(".", 2)[-1])  # `$KV.{bucket}.shard.NNNNN`
        if shard is None:
            return
        value = decode(msg.data) if msg.data else None
        if value is None or not value.owner:  # deleted, purged or free: nobody to go to directly
            self.owners.pop(shard, None)
            return
        old = self.owners.get(shard)
        if old is None or value.epoch >= old[1]:
            self.owners[shard] = (value.owner, value.epoch)
            self.gone.discard(value.owner)
            self.updates += 1

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        found = self.owners.get(shard_of(entity_type, entity_id, self.shards))
        return None if found is None or found[0] in self.gone else found[0]

    def subject(self, entity_type: str, entity_id: str, command_subject: str) -> str | None:
        """The owner's own subject for this command, or None where the map names nobody."""
        owner = self.owner(entity_type, entity_id)
        return None if owner is None else direct_subject(self.prefix, owner, command_subject)

    def forget(self, direct: str) -> None:
        """The member `direct` was addressed to answered nothing: skip it until it is named again."""
        member = direct[len(self.prefix) + len(".cmd.") + len(DIRECT_MARK) :].split(".", 1)[0]
        self.gone.add(member)
        self.fallbacks += 1


async def request_owner(
    nc: NATS,
    owner: str | None,
    prefix: str,
    subject: str,
    payload: bytes,
    *,
    timeout: float,
    headers: dict[str, str] | None,
) -> Msg:
    """A command request to `owner`'s own subject (None: the shared one), for a front door inside a
    member (the HTTP gateway, whose member's router names the owner); the shared subject when the
    owner has gone (nobody answered, nothing ran)."""
    if owner is not None:
        try:
            return await nc.request(direct_subject(prefix, owner, subject), payload, timeout=timeout, headers=headers)
        except NoRespondersError:
            pass
    return await nc.request(subject, payload, timeout=timeout, headers=headers)
