"""PostgreSQL connections terminated under load (as a failover, a pooler restart or an idle
timeout would): the journal and the view store serve again by themselves, nothing acknowledged
is lost or stored twice, and the log says so once rather than once per command."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import asyncpg
import pytest
import structlog
from support.postgres import POSTGRES_URL, schema_for
from support.waiting import eventually

from runtime import Envelope
from runtime.journal.postgres import PostgresJournal
from runtime.model.errors import DuplicateCommand, Unavailable
from runtime.streams.view_store import PostgresViewStore, RawRows

pytestmark = pytest.mark.anyio

WRITERS = 16
RECOVER_WITHIN_S = 10.0  # seconds after a kill until a write succeeds again


async def terminate(app: str) -> int:
    """Kill every backend of one application name; returns how many."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            app,
        )
        return len(rows)
    finally:
        await conn.close()


@pytest.fixture
async def schema(tmp_path: Path, postgres_url: str) -> AsyncIterator[str]:
    name = schema_for("f_", tmp_path)
    yield name
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    await conn.close()


def event(entity_id: str, seq: int, command_id: str) -> Envelope:
    return Envelope(
        entity_type="acct",
        entity_id=entity_id,
        seq=seq,
        name="Deposited",
        version=1,
        payload=b"{}",
        recorded_at=time.time_ns(),
        command_id=command_id,
        reply=f'"{seq}"'.encode(),
    )


async def test_journal_reconnects_after_its_backends_are_terminated_under_load(schema: str) -> None:
    app = f"memoir-fault-{schema}"
    acked: dict[tuple[str, str], int] = {}  # (entity, command id) -> seq the journal acknowledged
    unavailable = 0
    kills: list[float] = []
    first_ok_after: list[float] = []
    stop = anyio.Event()

    with structlog.testing.capture_logs() as logs:
        async with PostgresJournal(f"{POSTGRES_URL}?schema={schema}&application_name={app}") as journal:

            async def writer(w: int) -> None:
                nonlocal unavailable
                entity, seq = f"w{w}", 0
                for k in range(100_000):  # bounded; `stop` ends it long before
                    if stop.is_set():
                        return
                    cid = f"w{w}-{k}"
                    for _attempt in range(400):  # retry the same command id until it is known to be stored
                        try:
                            stored = await journal.append([event(entity, seq + 1, cid)], seq)
                            seq = stored[0].seq
                        except DuplicateCommand as dup:  # an earlier attempt landed after all
                            seq = dup.seq
                        except Unavailable as exc:
                            assert exc.reason == "connection lost", exc
                            unavailable += 1
                            await anyio.sleep(0.05)  # a pause before retrying, not a wait for something
                            continue
                        acked[(entity, cid)] = seq
                        if kills and len(first_ok_after) < len(kills):
                            first_ok_after.append(time.monotonic())
                        break
                    else:
                        pytest.fail(f"{cid}: not stored after 400 attempts")

            async def killer() -> None:
                for _ in range(2):
                    await anyio.sleep(1.0)  # pacing: a second of load before each kill
                    kills.append(time.monotonic())
                    assert await terminate(app) >= 1
                    await eventually(lambda: len(first_ok_after) >= len(kills), RECOVER_WITHIN_S, "an append ok again")
                await anyio.sleep(1.0)  # pacing: a second of load after the last recovery
                stop.set()

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for w in range(WRITERS):
                        tg.start_soon(writer, w)
                    tg.start_soon(killer)

            recovered = [ok - k for k, ok in zip(kills, first_ok_after, strict=True)]
            stored = await journal.read_all(1, limit=1_000_000)

    by_entity: dict[str, list[Envelope]] = {}
    for e in stored:
        by_entity.setdefault(e.entity_id, []).append(e)
    twice = sum(len(es) - len({e.command_id for e in es}) for es in by_entity.values())
    found = {(e.entity_id, e.command_id): e.seq for e in stored}
    lost = [k for k, seq in acked.items() if found.get(k) != seq]
    print(
        f"\npostgres journal: kills={len(kills)} recovered_s={[round(r, 3) for r in recovered]}"
        f" acknowledged={len(acked)} stored={len(stored)} stored_twice={twice} lost={len(lost)}"
        f" unavailable_answers={unavailable}"
    )
    assert not lost and twice == 0
    assert len(stored) == len(acked)  # every stored command was acknowledged: retries dedupe
    for es in by_entity.values():  # no gaps: seqs 1..n and positions increasing
        assert [e.seq for e in es] == list(range(1, len(es) + 1))
    assert [e.position for e in stored] == sorted({e.position for e in stored})
    lost_logs = [e for e in logs if e["event"] == "storage unavailable"]
    back_logs = [e for e in logs if e["event"] == "storage available again"]
    assert 1 <= len(lost_logs) <= len(kills), lost_logs  # once per outage, not once per command
    assert len(back_logs) == len(lost_logs)
    assert not [e for e in logs if e.get("log_level") == "error"]


class Counter:
    """A view batch as the view runner makes one: read a row, write it back, move the checkpoint."""

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def __call__(self, raw: RawRows) -> tuple[Mapping[str, bytes | None], Mapping[str, int]]:
        now = int(raw.get("count") or b"0")
        return {"count": str(now + 1).encode()}, {"s": self.seq}


async def test_view_store_reconnects_after_its_backends_are_terminated(tmp_path: Path, postgres_url: str) -> None:
    schema = schema_for("fv_", tmp_path)
    app = f"memoir-fault-{schema}"
    batches = 0
    kills: list[float] = []
    first_after: list[float] = []
    try:
        with structlog.testing.capture_logs() as logs:
            async with PostgresViewStore(f"{postgres_url}?schema={schema}&application_name={app}") as store:

                async def apply() -> None:
                    nonlocal batches
                    for seq in range(1, 100_000):  # bounded; stops after the kills
                        if len(kills) == 2 and first_after[-1:] and time.monotonic() - first_after[-1] > 1.0:
                            return
                        await store.transact("counter", Counter(seq))  # waits out the outage itself
                        batches = seq
                        if len(first_after) < len(kills):
                            first_after.append(time.monotonic())

                async def killer() -> None:
                    for _ in range(2):
                        await anyio.sleep(0.5)  # pacing: half a second of batches before each kill
                        kills.append(time.monotonic())
                        assert await terminate(app) >= 1
                        await eventually(lambda: len(first_after) >= len(kills), RECOVER_WITHIN_S, "a batch stored")

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(apply)
                        tg.start_soon(killer)
                count = await store.get("counter", "count")
                checkpoints = await store.checkpoints("counter")
    finally:
        conn = await asyncpg.connect(postgres_url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
    recovered = [ok - k for k, ok in zip(kills, first_after, strict=True)]
    print(f"\npostgres view store: kills={len(kills)} recovered_s={[round(r, 3) for r in recovered]} batches={batches}")
    assert count == str(batches).encode()  # every batch applied exactly once
    assert checkpoints == {"s": batches}
    lost_logs = [e for e in logs if e["event"] == "storage unavailable"]
    assert len(lost_logs) <= len(kills)
