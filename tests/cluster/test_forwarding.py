"""A forward that finds no responder is routed again, never dropped (in-process, no cluster).

Member `a` takes the client's command while its lease map still names `gone`, a member whose
forward subscription no longer exists (it drained it on its way out). NATS answers the forward
"no responders"; `a` waits for its map to move on, which names `b`, and forwards there. A forward
published with the client's reply subject would vanish here, and the client would time out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from entities.inventory import InventoryItem
from runtime import Client, MemoryJournal, Runtime
from runtime.serve.service import EmbeddedNats
from runtime.serve.service.nats_door import NatsDoor
from runtime.wire.nats import close_quietly, connect

pytestmark = pytest.mark.anyio


class StaleMap:
    """`a`'s view of the leases: names `gone` until asked to wait for a change, then `b`."""

    def __init__(self, member: str, first: str, then: str) -> None:
        self.member = member
        self.current = first
        self.then = then
        self.waited_on: list[str] = []

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        return self.current

    async def wait_owner(self, entity_type: str, entity_id: str, timeout: float) -> str | None:
        return self.current

    async def wait_change(self, entity_type: str, entity_id: str, owner: str, timeout: float) -> None:
        self.waited_on.append(owner)
        self.current = self.then


class Owner:
    member = "b"

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        return self.member

    async def wait_owner(self, entity_type: str, entity_id: str, timeout: float) -> str | None:
        return self.member

    async def wait_change(self, entity_type: str, entity_id: str, owner: str, timeout: float) -> None:
        raise AssertionError("b owns the entity throughout")


class Stable:
    """A lease map that names `b` throughout, and waits as the real one does when nothing changes."""

    member = "a"

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        return "b"

    async def wait_owner(self, entity_type: str, entity_id: str, timeout: float) -> str | None:
        return "b"

    async def wait_change(self, entity_type: str, entity_id: str, owner: str, timeout: float) -> None:
        await anyio.sleep(timeout)


@dataclass
class Members:
    url: str
    a: NatsDoor  # takes the client's commands, with the lease map under test
    b: NatsDoor  # the owner: serves forwards only, once started
    rt_b: Runtime
    tg: Any

    async def start_b(self) -> None:
        await self.tg.start(self.b.run)
        await self.b.stop_taking()  # b serves forwards only: every client command reaches `a` first

    async def receive(self, timeout: float) -> Any:
        async with Client(self.url) as client:
            reply = await client.send("inventory", "X1", "receive", {"units": 3, "on": "2022-03-01"}, timeout=timeout)
        return reply.result

    async def units_at_b(self) -> int:
        return int((await self.rt_b.ask("inventory", "X1", "get")).result.units)


@contextlib.asynccontextmanager
async def members(tmp_path: Path, router_a: Any) -> AsyncIterator[Members]:
    """Two transports on one NATS and one journal: `a` (running) routes by `router_a`, `b` owns."""
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        MemoryJournal() as journal,
        Runtime([InventoryItem], journal) as rt_a,
        Runtime([InventoryItem], journal) as rt_b,
        anyio.create_task_group() as tg,
    ):
        nc_a, nc_b = await connect(server.url), await connect(server.url)
        a = NatsDoor(rt_a, nc_a, workers=2, router=router_a)
        b = NatsDoor(rt_b, nc_b, workers=2, router=Owner())
        await tg.start(a.run)
        try:
            yield Members(server.url, a, b, rt_b, tg)
        finally:
            await a.stop()
            await b.stop()
            await close_quietly(nc_a)
            await close_quietly(nc_b)


async def test_a_forward_to_an_owner_not_yet_listening_is_sent_again(tmp_path: Path) -> None:
    """The owner holds the lease but its forward subscription is not there yet (it has just started,
    or its interest has not reached this NATS server): the map will not change, so the forward is
    simply sent again after a short pause, within the sender's time."""
    async with members(tmp_path, Stable()) as m:

        async def b_starts_late() -> None:
            await anyio.sleep(0.5)  # on purpose: b starts after the first forward went out
            await m.start_b()

        m.tg.start_soon(b_starts_late)
        assert await m.receive(timeout=4) is not None
        assert m.a.rerouted >= 1 and m.b.forwarded == 0
        assert await m.units_at_b() == 3  # ran once, at b


async def test_a_forward_to_a_member_that_left_is_routed_again(tmp_path: Path) -> None:
    stale = StaleMap("a", first="gone", then="b")
    async with members(tmp_path, stale) as m:
        await m.start_b()
        assert await m.receive(timeout=10) is not None
        assert stale.waited_on == ["gone"]  # `a` learned of the loss and waited for its map
        assert (m.a.rerouted, m.a.forwarded, m.b.forwarded) == (1, 2, 0)
        assert await m.units_at_b() == 3  # ran once, at b
