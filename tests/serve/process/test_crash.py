"""SIGKILL in the middle of 10,000 commands: after a restart and a re-send of everything that got no
reply, every command's effect is in the journal exactly once, seqs are gap-free, the streams hold
exactly the journal's events, and the view and the profiles agree with the journal."""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import anyio
import nats
import pytest
from support.process import RunningRuntime
from support.reading import journal_events, stream_messages
from support.waiting import eventually

from runtime import SqliteJournal
from runtime.model.errors import CommandError
from runtime.serve.service.client import Client
from runtime.wire.auth import NatsAuth
from runtime.wire.protocol import stream_name, token

pytestmark = pytest.mark.anyio

TOTAL, CLIENTS, KILL_AFTER = 10_000, 8, 3_000


def command(i: int) -> tuple[str, str, str, dict[str, Any]]:
    if i % 2 == 0:
        return "inventory", f"sku-{i % 100}", "receive", {"units": 1, "on": "2022-03-01"}
    return "post", f"p{i}", "publish", {"author": f"author-{i % 50}", "text": f"post {i}"}


async def send_all(
    url: str,
    todo: list[int],
    answered: set[int],
    *,
    stop_after: int | None = None,
    stopped: anyio.Event | None = None,
    auth: NatsAuth | None = None,
) -> None:
    """Send `todo` from CLIENTS concurrent connections; record which got a successful reply."""
    queue = list(reversed(todo))

    async def client_loop() -> None:
        async with Client(url, auth=auth) as client:
            while queue:
                i = queue.pop()
                entity_type, entity_id, cmd, args = command(i)
                try:
                    await client.send(entity_type, entity_id, cmd, args, command_id=f"cmd-{i}", timeout=3)
                except (CommandError, TimeoutError, nats.errors.Error):
                    continue  # no reply: re-sent after the restart
                answered.add(i)
                if stop_after is not None and len(answered) >= stop_after and stopped is not None:
                    stopped.set()

    async with anyio.create_task_group() as tg:
        for _ in range(CLIENTS):
            tg.start_soon(client_loop)


async def test_sigkill_midway_loses_and_duplicates_nothing(runtime_process: RunningRuntime) -> None:
    rt = runtime_process
    url = rt.nats_url
    answered: set[int] = set()
    enough = anyio.Event()

    async with anyio.create_task_group() as tg:

        async def killer() -> None:
            await enough.wait()
            rt.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            tg.cancel_scope.cancel()  # requests in flight get no reply: they are re-sent below

        tg.start_soon(killer)
        await send_all(url, list(range(TOTAL)), answered, stop_after=KILL_AFTER, stopped=enough, auth=rt.auth)
    assert rt.proc is not None and rt.proc.wait(10) == -signal.SIGKILL
    rt.close()
    assert KILL_AFTER <= len(answered) < TOTAL, "the kill landed in the middle"

    rt.start()  # same data dir: same journal, same embedded NATS store and port
    assert rt.nats_url == url
    for _ in range(5):  # re-send whatever got no reply, until everything has one
        missing = [i for i in range(TOTAL) if i not in answered]
        if not missing:
            break
        await send_all(url, missing, answered, auth=rt.auth)
    assert len(answered) == TOTAL

    async with SqliteJournal(rt.data / "journal.db") as journal:
        stored = await journal_events(journal)
    ours = [e for e in stored if e.command_id and e.command_id.startswith("cmd-")]
    per_command = Counter(e.command_id for e in ours)
    assert len(per_command) == TOTAL and set(per_command.values()) == {1}, "each effect exactly once"

    seqs: dict[tuple[str, str], list[int]] = {}
    for e in stored:
        seqs.setdefault((e.entity_type, e.entity_id), []).append(e.seq)
    for key, s in seqs.items():
        assert s == list(range(1, len(s) + 1)), f"{key} has gaps"

    nc = await rt.connect()
    try:
        js = nc.jetstream()

        async def streams_complete() -> bool:
            total = 0
            for t in ("inventory", "post", "profile"):
                total += (await js.stream_info(stream_name("memoir", t))).state.messages
            return total == len(await _all(rt))

        await eventually(streams_complete, timeout=60, what="the streams to hold every journal event")
        stored = await _all(rt)
        in_streams: list[str] = []
        for t in ("inventory", "post", "profile"):
            in_streams += [m.headers["Nats-Msg-Id"] for m in await stream_messages(js, stream_name("memoir", t))]
        assert sorted(in_streams) == sorted(f"{e.entity_type}/{token(e.entity_id)}/{e.seq}" for e in stored)

        truth = Counter(f"author-{i % 50}" for i in range(1, TOTAL, 2))

        async def views_agree() -> bool:
            rows = {}
            after = ""
            while True:
                msg = await nc.request(
                    "memoir.view.posts_by_author.scan", f'{{"after": "{after}", "limit": 1000}}'.encode(), timeout=5
                )
                page = __import__("json").loads(msg.data)["result"]
                if not page:
                    break
                rows.update({k: v["posts"] for k, v in page})
                after = page[-1][0]
            if rows != truth:
                return False
            async with Client(nc=nc) as client:
                for author, n in truth.items():
                    if (await client.send("profile", author, "get")).result["posts"] != n:
                        return False
            return True

        await eventually(views_agree, timeout=60, what="the view and the profiles to agree with the journal")
    finally:
        await nc.close()
    assert rt.stop() == 0


async def _all(rt: RunningRuntime) -> list[Any]:
    async with SqliteJournal(rt.data / "journal.db") as journal:
        return await journal_events(journal)
