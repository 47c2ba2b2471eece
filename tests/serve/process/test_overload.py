"""A hot entity under overload, with clients that resend the same command id as soon as they time out.

Before, requests queued per entity ran after their senders gave up, and the resend landed
beyond the actor's window of remembered ids: ids were stored two to 75 times. Now a request
carrying its sender's timeout is dropped unrun once that passes, and the journal refuses a
second append of an id whatever the actor remembers: every id is stored at most once.
"""

from __future__ import annotations

import collections
import random

import anyio
import anyio.lowlevel
import nats
import pytest
from support.process import RunningRuntime

from runtime import Client, CommandError, SqliteJournal
from runtime.wire.protocol import H_COMMAND_ID

pytestmark = pytest.mark.anyio

SENDERS, ATTEMPTS, TIMEOUT = 800, 8, 0.2
RECEIVE = b'{"units": 1, "on": "2022-03-01"}'
SUBJECT = "memoir.cmd.inventory.HOT.receive"


async def test_resends_under_overload_never_store_an_id_twice(runtime_process: RunningRuntime) -> None:
    url = runtime_process.nats_url
    acknowledged: set[str] = set()
    resends = 0

    async def with_client(client: Client, cid: str) -> None:  # sends Memoir-Timeout-Ms
        nonlocal resends
        for attempt in range(ATTEMPTS):
            resends += attempt > 0
            try:
                await client.send("inventory", "HOT", "receive", RECEIVE, command_id=cid, timeout=TIMEOUT)
            except (TimeoutError, CommandError):
                continue
            acknowledged.add(cid)
            return

    async def raw(nc: nats.NATS, cid: str) -> None:  # another language's client: no timeout header
        nonlocal resends
        for attempt in range(ATTEMPTS):
            resends += attempt > 0
            try:
                msg = await nc.request(
                    "memoir.cmd.inventory.HOT.receive", RECEIVE, TIMEOUT, headers={H_COMMAND_ID: cid}
                )
            except nats.errors.TimeoutError:
                continue
            if b'"ok":true' in msg.data:
                acknowledged.add(cid)
                return

    async with Client(url, auth=runtime_process.auth) as client:
        nc = await runtime_process.connect()
        try:
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(SENDERS):
                        if i % 2:
                            tg.start_soon(with_client, client, f"c-{i}")
                        else:
                            tg.start_soon(raw, nc, f"r-{i}")
                        if random.random() < 0.1:
                            await anyio.lowlevel.checkpoint()
        finally:
            await nc.close()

    assert resends > 0, "the load did not make anyone resend: the test proves nothing"
    assert runtime_process.stop() == 0
    async with SqliteJournal(runtime_process.data / "journal.db") as journal:
        events = await journal.read("inventory", "HOT")
    stored = collections.Counter(e.command_id for e in events)
    print(f"senders {SENDERS}, resends {resends}, acknowledged {len(acknowledged)}, stored {len(events)}")
    twice = {cid: n for cid, n in stored.items() if n > 1}
    assert not twice, f"ids stored more than once: {sorted(twice.items())[:10]}"
    assert acknowledged <= set(stored), "an acknowledged command is missing from the journal"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
