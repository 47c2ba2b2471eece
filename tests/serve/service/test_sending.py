"""A member's sender (`MemberSender`) in one process: two runtimes on one journal and one NATS.

`a` sends; a lease map says who owns the entity. What `a` does not own is forwarded to `b`'s NATS
door as from inside (a command only a consumer may send is allowed there), with its ids kept, the
owner's dedupe holding and its refusals raised as typed errors; a turn that finds its entity moved
is routed again; a command no owner takes in time is `overloaded`, never `Moved`. A client cannot
borrow the inside mark.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from entities.inventory import InventoryItem
from entities.reservation import Reservation
from runtime import Client, CommandError, MemoryJournal, Runtime
from runtime.model.access import ANONYMOUS
from runtime.model.errors import Moved
from runtime.serve.service import EmbeddedNats
from runtime.serve.service.forwarding import H_HOPS, H_INSIDE
from runtime.serve.service.nats_door import NatsDoor
from runtime.serve.service.sending import MemberSender, answer_here, ask_here
from runtime.wire.nats import close_quietly, connect
from runtime.wire.protocol import command_subject, decode_answer

pytestmark = pytest.mark.anyio

APP = [Reservation, InventoryItem]
HOLD = {"sku": "s", "units": 2, "hold_for": 600}


class Map:
    """The lease map as `member` sees it: `owners` in turn, the next one after each wait for a change."""

    def __init__(self, member: str, *owners: str | None) -> None:
        self.member = member
        self.owners = list(owners)
        self.changes = 0

    def owner(self, entity_type: str, entity_id: str) -> str | None:
        return self.owners[0]

    async def wait_owner(self, entity_type: str, entity_id: str, timeout: float) -> str | None:
        await anyio.sleep(timeout)  # nobody comes: the real map waits the same way
        return self.owners[0]

    async def wait_change(self, entity_type: str, entity_id: str, owner: str, timeout: float) -> None:
        self.changes += 1
        if len(self.owners) > 1:
            self.owners.pop(0)


@dataclass
class Pair:
    url: str
    sender: MemberSender
    rt_a: Runtime
    rt_b: Runtime
    journal: MemoryJournal


@contextlib.asynccontextmanager
async def pair(tmp_path: Path, routes: Map, *, a_owns: bool = True) -> AsyncIterator[Pair]:
    """`a` sends by `routes`; `b` owns everything and serves forwards (and, through `a`'s door, clients)."""
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        MemoryJournal() as journal,
        Runtime(APP, journal, admits=lambda t, i: a_owns) as rt_a,
        Runtime(APP, journal) as rt_b,
        anyio.create_task_group() as tg,
    ):
        nc_a, nc_b = await connect(server.url), await connect(server.url)
        door_a = NatsDoor(rt_a, nc_a, workers=2, router=routes)
        door_b = NatsDoor(rt_b, nc_b, workers=2, router=Map("b", "b"))
        await tg.start(door_b.run)
        await door_b.stop_taking()  # b serves forwards only: client commands reach `a` first
        await tg.start(door_a.run)
        try:
            yield Pair(server.url, MemberSender(rt_a, nc_a, routes, prefix="memoir"), rt_a, rt_b, journal)
        finally:
            await door_a.stop()
            await door_b.stop()
            await close_quietly(nc_a)
            await close_quietly(nc_b)


async def test_a_command_owned_elsewhere_runs_at_the_owner_as_from_inside(tmp_path: Path) -> None:
    async with pair(tmp_path, Map("a", "b")) as p:
        await p.sender.ask("reservation", "r1", "hold", HOLD)
        took = await p.sender.ask(
            "reservation", "r1", "took", {"units": 2}, command_id="c1", correlation_id="k1", causation_id="e1"
        )  # `took` allows no caller from outside: it ran as from inside the member
        again = await p.sender.ask("reservation", "r1", "took", {"units": 2}, command_id="c1")
        assert (took.result, took.duplicate, again.seq, again.duplicate) == ("held", False, took.seq, True)
        assert (p.rt_a.live_actors, p.rt_b.live_actors) == (0, 1)  # nothing of it ran at `a`
        stored = (await p.journal.read("reservation", "r1"))[-1]
        assert (stored.command_id, stored.correlation_id, stored.causation_id) == ("c1", "k1", "e1")
        assert p.sender.forwards.forwarded == 3


async def test_the_owners_refusal_is_its_typed_error(tmp_path: Path) -> None:
    async with pair(tmp_path, Map("a", "b")) as p:
        with pytest.raises(CommandError) as refused:
            await p.sender.ask("reservation", "r2", "pay")
        assert refused.value.code == "rejected" and "new, not held" in refused.value.message


async def test_a_turn_that_finds_its_entity_moved_is_routed_again(tmp_path: Path) -> None:
    routes = Map("a", "a", "b")  # `a` thinks it owns the entity, its fence says no, then the map names `b`
    async with pair(tmp_path, routes, a_owns=False) as p:
        reply = await p.sender.ask("reservation", "r3", "hold", HOLD)
        assert reply.result == "held" and routes.changes == 1 and p.rt_b.live_actors == 1


async def test_no_owner_in_time_is_overloaded_never_moved(tmp_path: Path) -> None:
    async with pair(tmp_path, Map("a", None)) as p:
        with pytest.raises(CommandError) as late:
            await p.sender.ask("reservation", "r4", "hold", HOLD, deadline=time.monotonic() + 0.3)
        assert late.value.code == "overloaded" and not isinstance(late.value, Moved)


async def test_a_client_cannot_claim_to_be_inside(tmp_path: Path) -> None:
    async with pair(tmp_path, Map("a", "b")) as p, Client(p.url) as client:
        await client.send("reservation", "r5", "hold", HOLD)
        forged: dict[str, Any] = {H_INSIDE: "1", H_HOPS: "0"}
        with pytest.raises(CommandError) as refused:  # forwarded by `a` to `b` without the mark
            await client.request(
                command_subject("memoir", "reservation", "r5", "took"), b'{"units": 9}', headers=forged
            )
        assert refused.value.code == "unauthorized"
        assert (await p.rt_b.ask("reservation", "r5", "get")).result.taken == 0


async def test_ask_here_runs_only_what_this_member_owns(tmp_path: Path) -> None:
    """The HTTP gateway's shortcut: an outside caller's command runs in process when ours, else None."""
    async with MemoryJournal() as journal, Runtime(APP, journal, admits=lambda t, i: i != "moved") as rt:
        hold = msgspec.json.encode(HOLD)
        ours = await ask_here(rt, Map("a", "a"), "reservation", "r6", "hold", hold, caller=ANONYMOUS, command_id="h")
        assert ours is not None and ours.result == "held"
        assert await ask_here(rt, Map("a", "b"), "reservation", "r7", "hold", hold, caller=ANONYMOUS) is None
        assert await ask_here(rt, Map("a", "a"), "reservation", "moved", "hold", hold, caller=ANONYMOUS) is None
        with pytest.raises(CommandError) as refused:  # the access rules hold for the caller
            await ask_here(rt, None, "reservation", "r6", "took", b'{"units": 1}', caller=ANONYMOUS)
        assert refused.value.code == "unauthorized"
        assert await journal.read("reservation", "r7") == []  # never ran here


async def test_answer_here_answers_as_the_nats_door_would(tmp_path: Path) -> None:
    async with MemoryJournal() as journal, Runtime(APP, journal) as rt:

        async def answer(
            entity_id: str, command: str, body: bytes, ids: dict[str, str], routes: Map | None = None
        ) -> Any:
            found = await answer_here(
                rt, routes, "reservation", entity_id, command, body, ids, caller=ANONYMOUS, timeout=5
            )
            return None if found is None else decode_answer(found)

        hold = msgspec.json.encode(HOLD)
        first = await answer("r8", "hold", hold, {"Memoir-Command-Id": "h1"})
        again = await answer("r8", "hold", hold, {"Memoir-Command-Id": "h1"})
        assert (first.ok, first.duplicate, again.ok, again.duplicate) == (True, False, True, True)
        bad = await answer("r8", "pay", b"{}", {"Memoir-Command-Id": ""})  # ids are checked as the door checks them
        assert not bad.ok and bad.error.code == "invalid"
        assert await answer("r9", "hold", hold, {}, Map("a", "b")) is None
