"""runtime/serve/service/door_inbox.py: the NATS door's subscriptions hand messages straight to its
worker queue (no nats-py queue and task between), and what the door refuses there is still answered
at once: a full queue is `overloaded`, a payload over the limit `invalid`; a drain leaves nothing
behind that was queued."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from support.waiting import eventually

from entities.inventory import InventoryItem
from runtime import MemoryJournal, Runtime
from runtime.serve.service import EmbeddedNats
from runtime.serve.service.door_inbox import Inbox
from runtime.serve.service.nats_door import NatsDoor
from runtime.wire.nats import close_quietly, connect

pytestmark = pytest.mark.anyio

RECEIVE = b'{"units": 1, "on": "2022-03-01"}'


async def test_a_command_goes_from_the_socket_to_a_worker_and_refusals_are_answered(tmp_path: Path) -> None:
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        MemoryJournal() as journal,
        Runtime([InventoryItem], journal) as rt,
        anyio.create_task_group() as tg,
    ):
        served, idle = await connect(server.url), await connect(server.url)
        client = await connect(server.url)
        try:
            door = NatsDoor(rt, served, workers=2)
            await tg.start(door.run)
            assert door._sub is not None and all(isinstance(s._pending_queue, Inbox) for s in door._sub)
            msg = await client.request("memoir.cmd.inventory.A.receive", RECEIVE, timeout=10)
            assert json.loads(msg.data) == {"ok": True, "result": 1, "seq": 1}

            # no workers: two requests fill the queue, the third is refused at once; so is a big payload
            full = NatsDoor(rt, idle, prefix="idle", workers=0, backlog=2, max_payload=64)
            await tg.start(full.run)
            held = [await client.publish("idle.cmd.inventory.B.receive", RECEIVE, reply=f"_h.{n}") for n in range(2)]
            assert held == [None, None]
            await client.flush()
            await eventually(lambda: full._queue.qsize() == 2, 10, "the two requests queued")
            third = await client.request("idle.cmd.inventory.B.receive", RECEIVE, timeout=10)
            assert json.loads(third.data)["error"]["code"] == "overloaded"
            big = await client.request("idle.cmd.inventory.B.receive", b" " * 65 + RECEIVE, timeout=10)
            assert json.loads(big.data)["error"] == {
                "code": "invalid",
                "message": "payload is 97 bytes, the limit is 64",
            }
            assert full._queue.qsize() == 2 and full.queued_bytes == 2 * len(RECEIVE)
            await door.stop()
            await full.stop_taking()  # a drain returns with the two still queued: they are the door's
            await full.stop()
        finally:
            for nc in (served, idle, client):
                await close_quietly(nc)
    assert await journal.read("inventory", "B") == []
