"""Routing a command to its owner in a cluster: the one loop the NATS door and the member's sender share.

`route` runs the command here while this member owns its entity, and otherwise hands it to
`there`, which forwards it to the owner's `{prefix}.fwd.{member}.cmd.…` as a request. While a
shard changes hands the allocation is waited on, within the sender's time; a turn that finds
its entity moved (`Moved`, from the runtime's fence) and a forward that finds no responder (the
owner left, or its subscription has not reached this NATS node yet) are routed again once the
map moves on. So how long members take to see a move is latency, never a lost command.

A forward carries `Memoir-Hops` (bounded by `MAX_HOPS`) and the time its sender still waits
(`Memoir-Timeout-Ms`), so the owner drops it unrun once nobody waits. A command a member sends
for itself (a consumer's, a timer's, a workflow step's) carries `Memoir-Inside`: the owner runs
it as from inside (no caller, the access rules do not apply), which is why the forward subject
is for members only, and why a client's own `Memoir-Inside` is dropped before forwarding.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from nats.errors import NoRespondersError

from ...model.errors import Moved

log = structlog.get_logger("memoir.transport")

H_HOPS = "Memoir-Hops"  # on a forwarded command: how many members passed it on
H_INSIDE = "Memoir-Inside"  # on a forward only: sent by a member for itself, run without a caller
MAX_HOPS = 4
FORWARD_TIMEOUT = 5.0  # for requests that do not say how long their sender waits
FIRST_REROUTE_PAUSE, MAX_REROUTE_PAUSE = 0.02, 0.5  # between forwards that found no responder

T = TypeVar("T")


class Router(Protocol):
    """Who owns an entity in a cluster (the `ShardRouter`); asked for every routed command."""

    member: str

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        """The member serving the entity now; None while its shard has no owner."""

    async def wait_owner(self, entity_type: str, entity_id: str, timeout: float) -> str | None:
        """The owner, once there is one (a shard being handed over), or None after `timeout`."""

    async def wait_change(self, entity_type: str, entity_id: str, owner: str, timeout: float) -> None:
        """Return once the entity's owner is no longer `owner` as this process sees it, or after `timeout`."""


@dataclass
class Forwards:
    """What routing did, for metrics and tests."""

    forwarded: int = 0
    rerouted: int = 0  # forwards that found their target gone and were routed again


def forward_subject(prefix: str, member: str, command_subject: str) -> str:
    """`{prefix}.cmd.…` as the forward to `member`: `{prefix}.fwd.{member}.cmd.…`."""
    return f"{prefix}.fwd.{member}" + command_subject[len(prefix) :]


async def route(
    router: Router,
    entity_type: str,
    entity_id: str,
    until: float,
    here: Callable[[], Awaitable[T]],
    there: Callable[[str, float], Awaitable[T]],
    *,
    counts: Forwards,
    may_forward: bool = True,
) -> T:
    """`here()` if this member owns the entity, else `there(owner, seconds left)`; until `until`.

    `there` raises `NoRespondersError` when nobody took the forward: the command is routed
    again. Raises `Moved` when no owner took it by `until` (or it may not be forwarded again).
    """
    pause = FIRST_REROUTE_PAUSE
    while (left := until - time.monotonic()) > 0:
        owner = router.owner(entity_type, entity_id)
        if owner is None:
            await router.wait_owner(entity_type, entity_id, left)
            continue  # re-read the clock and the owner
        if owner == router.member:
            try:
                return await here()
            except Moved:  # the shard left between the look-up and the turn
                await router.wait_change(entity_type, entity_id, owner, left)
                continue
        if not may_forward:
            break
        counts.forwarded += 1
        try:
            return await there(owner, left)
        except NoRespondersError:
            log.debug("forward found no one; routing again", entity_type=entity_type, owner=owner)
            counts.rerouted += 1
            await router.wait_change(entity_type, entity_id, owner, min(pause, until - time.monotonic()))
            pause = min(pause * 2, MAX_REROUTE_PAUSE)
    raise Moved(entity_type, entity_id)
