"""Transfers (a withdraw, a deposit, a refund when the deposit is refused) while the runtime is
SIGKILLed twice, between and inside steps: after restarts every transfer ends in the right state,
every balance is exact, and no step's effect is doubled."""

from __future__ import annotations

import signal
from collections import Counter

import anyio
import msgspec
import nats
import pytest
from streams.timers.ledger import expected_balances
from support.process import RunningRuntime
from support.reading import journal_events
from support.waiting import eventually

from runtime import SqliteJournal
from runtime.model.errors import CommandError
from runtime.serve.service.client import Client

pytestmark = pytest.mark.anyio

ACCOUNTS, TRANSFERS, OPENING = 8, 160, 1_000


def transfer(i: int) -> dict[str, object]:
    source = f"a{i % ACCOUNTS}"
    target = "closed" if i % 5 == 0 else f"a{(i + 1 + i % 3) % ACCOUNTS}"
    return {"source": source, "target": target, "amount": i % 40 + 1}


async def start_all(url: str, todo: list[int], acked: set[int], kill_after: int | None, rt: RunningRuntime) -> None:
    """Start transfers from 8 connections; with `kill_after`, SIGKILL the runtime once that many are acked."""
    queue = list(reversed(todo))
    async with anyio.create_task_group() as tg:

        async def starter() -> None:
            async with Client(url, auth=rt.auth) as client:
                while queue:
                    i = queue.pop()
                    try:
                        await client.send("transfer", f"t{i}", "start", transfer(i), timeout=3)
                    except (CommandError, TimeoutError, nats.errors.Error):
                        continue  # no answer: started again after the restart (same id: once)
                    acked.add(i)
                    if kill_after is not None and len(acked) >= kill_after and rt.proc is not None:
                        rt.proc.send_signal(signal.SIGKILL)
                        tg.cancel_scope.cancel()

        for _ in range(8):
            tg.start_soon(starter)


async def test_transfers_survive_sigkill_between_and_inside_steps(sagas_process: RunningRuntime) -> None:
    rt = sagas_process
    async with Client(rt.nats_url, auth=rt.auth) as client:
        for a in range(ACCOUNTS):
            await client.send("account", f"a{a}", "deposit", {"amount": OPENING})
        await client.send("account", "closed", "close")
    acked: set[int] = set()
    await start_all(rt.nats_url, list(range(TRANSFERS // 2)), acked, None, rt)
    assert rt.stop(signal.SIGKILL) == -signal.SIGKILL  # the first half in flight: kills between and inside their steps

    rt.start()
    await start_all(rt.nats_url, list(range(TRANSFERS // 2, TRANSFERS)), acked, TRANSFERS // 2 + 20, rt)
    assert rt.proc is not None and rt.proc.wait(10) == -signal.SIGKILL
    rt.close()

    rt.start()
    missing = [i for i in range(TRANSFERS) if i not in acked]
    await start_all(rt.nats_url, missing, acked, None, rt)
    assert len(acked) == TRANSFERS
    async with Client(rt.nats_url, auth=rt.auth) as client:

        async def all_finished() -> bool:
            for i in range(TRANSFERS):
                if (await client.send("transfer", f"t{i}", "get")).result["status"] not in ("ended", "failed"):
                    return False
            return True

        await eventually(all_finished, 90, "every transfer ended or failed")
        outcomes = {i: (await client.send("transfer", f"t{i}", "get")).result for i in range(TRANSFERS)}
        balances = {
            a: (await client.send("account", a, "get")).result["balance"]
            for a in [f"a{n}" for n in range(ACCOUNTS)] + ["closed"]
        }
    assert rt.stop() == 0

    assert balances == expected_balances(outcomes, transfer, ACCOUNTS, OPENING)

    shown = rt.cli("events", "transfer", "t1").stdout  # a workflow's history is an entity's history
    assert "Started" in shown and "StepCompleted" in shown and "Ended" in shown
    async with SqliteJournal(rt.data / "journal.db") as journal:
        events = await journal_events(journal)
    resumed = {e.entity_id for e in events if e.entity_type == "transfer" and (e.command_id or "").startswith("timer:")}
    assert resumed, "no transfer was cut short by a kill (each one's watchdog timer would have run it on)"
    moves = [e for e in events if e.entity_type == "account" and (e.command_id or "").startswith("wf:")]
    assert len({e.command_id for e in moves}) == len(moves)  # each step's command stored once
    per_transfer = Counter(str(e.command_id).split("/")[1] for e in moves)
    assert per_transfer == {f"t{i}": 2 for i in range(TRANSFERS)}  # withdraw + deposit, or withdraw + refund
    for e in moves:
        assert msgspec.json.decode(e.payload)["amount"] == transfer(int(str(e.command_id).split("/")[1][1:]))["amount"]
