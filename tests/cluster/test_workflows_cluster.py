"""Transfer workflows on three `memoir run --cluster` processes sharing one PostgreSQL journal.

In a cluster a workflow's steps send their commands through the NATS client (the account may be
owned by another member) and its timer's firings are routed to the workflow's owner. One member
is SIGKILLed while transfers run: its workflows move to the others and their watchdogs run the
interrupted steps again. Every transfer ends as it should, every balance is exact, and each
step's command is stored once.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from streams.timers.ledger import expected_balances
from support.members import Member, wait_cluster
from support.postgres import POSTGRES_URL
from support.waiting import eventually

from runtime import Client, CommandError, open_journal

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

ACCOUNTS, TRANSFERS, OPENING = 6, 90, 1_000


def transfer(i: int) -> dict[str, object]:
    target = "closed" if i % 6 == 0 else f"a{(i + 1) % ACCOUNTS}"
    return {"source": f"a{i % ACCOUNTS}", "target": target, "amount": i % 9 + 1}


async def _until_answered(
    client: Client, entity_type: str, entity_id: str, command: str, args: object = None
) -> object:
    """Resend (same id for a start: a workflow's id is its idempotency key) until a member answers."""
    with anyio.fail_after(60):
        while True:
            try:
                return (await client.send(entity_type, entity_id, command, args, timeout=3)).result
            except (CommandError, TimeoutError):
                await anyio.sleep(0.1)  # a pause before resending, not a wait for something


async def test_transfers_run_across_members_and_survive_one_being_killed(
    nats_cluster: NatsCluster,
    tmp_path: Path,
    prefix: str,
    pg_schema: str,
) -> None:
    urls = nats_cluster.urls
    pg = f"{POSTGRES_URL}?schema={pg_schema}"

    members = [Member.member(i, urls[i], pg, pg, prefix, tmp_path, "entities:sagas") for i in range(3)]
    for m in members:
        m.start()
    try:
        await wait_cluster(urls[0], prefix, 3, members)
        async with Client(urls[1], prefix=prefix) as client:
            for a in range(ACCOUNTS):
                await _until_answered(client, "account", f"a{a}", "deposit", {"amount": OPENING})
            await _until_answered(client, "account", "closed", "close")

            async def start(i: int) -> None:
                await _until_answered(client, "transfer", f"t{i}", "start", transfer(i))

            async with anyio.create_task_group() as tg:
                for i in range(TRANSFERS):
                    tg.start_soon(start, i)
                    if i == TRANSFERS // 3:  # some in flight, inside or between steps
                        assert members[2].signal(signal.SIGKILL) == -signal.SIGKILL

            outcomes: dict[int, dict[str, Any]] = {}

            async def all_finished() -> bool:
                for i in (i for i in range(TRANSFERS) if i not in outcomes):
                    out = await _until_answered(client, "transfer", f"t{i}", "get")
                    assert isinstance(out, dict)
                    if out["status"] not in ("ended", "failed"):
                        return False
                    outcomes[i] = out
                return True

            await eventually(all_finished, 120, "every transfer ended or failed")
            balances = {}
            for a in [f"a{n}" for n in range(ACCOUNTS)] + ["closed"]:
                got = await _until_answered(client, "account", a, "get")
                assert isinstance(got, dict)
                balances[a] = got["balance"]
    finally:
        stopped = {m.name: m.signal(signal.SIGTERM) for m in members if m.proc is not None}
    assert set(stopped.values()) == {0}, stopped

    assert balances == expected_balances(outcomes, transfer, ACCOUNTS, OPENING)

    async with open_journal(pg) as journal:
        moves = []
        for a in [f"a{n}" for n in range(ACCOUNTS)] + ["closed"]:
            moves += [e for e in await journal.read("account", a) if (e.command_id or "").startswith("wf:")]
    assert len({e.command_id for e in moves}) == len(moves)  # each step's command stored once
    per_transfer = Counter(str(e.command_id).split("/")[1] for e in moves)
    assert per_transfer == {f"t{i}": 2 for i in range(TRANSFERS)}  # withdraw + deposit, or withdraw + refund
    for e in moves:
        assert msgspec.json.decode(e.payload)["amount"] == transfer(int(str(e.command_id).split("/")[1][1:]))["amount"]
