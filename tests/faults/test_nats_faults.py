"""nats-server SIGKILLed and restarted under concurrent append load through the JetStream journal:
appends fail fast and clearly while it is gone, succeed again soon after the restart, and every
acknowledged append is stored exactly once, with no gaps."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from support.journals import ev
from support.waiting import eventually

from runtime import Conflict, Envelope, JournalError
from runtime.journal.jetstream import JetStreamJournal
from runtime.model.errors import Unavailable
from runtime.serve.service.embedded_nats import EmbeddedNats

pytestmark = pytest.mark.anyio

WRITERS = 8
ANSWER_WITHIN = 5.0  # seconds: no append waits out a long ack timeout
RECOVER_WITHIN = 2.0  # seconds after the restart until appends succeed again


async def test_appends_recover_after_a_nats_restart_and_nothing_is_lost(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "n", sync="always")
    await server.start()
    acknowledged: dict[str, list[bytes]] = {f"w{k}": [] for k in range(WRITERS)}
    unavailable: list[str] = []
    landed_unseen = 0  # answered "unavailable", found stored when looked up
    oks_after: list[float] = []  # monotonic times of successful appends after the restart
    restarted_at: float | None = None
    stop = anyio.Event()

    async def writer(journal: JetStreamJournal, entity_id: str) -> None:
        """Append one op at a time; an op whose outcome is unknown is looked up before it is retried."""
        nonlocal landed_unseen
        op, head = 0, 0
        for _ in range(100_000):
            if stop.is_set():
                return
            payload = f'"{entity_id}-{op}"'.encode()
            try:
                with anyio.fail_after(ANSWER_WITHIN):  # answered, ok or not, without waiting out a timeout
                    await journal.append([ev(entity_id, head + 1, payload)], head)
            except (Unavailable, Conflict) as exc:
                if isinstance(exc, Unavailable):
                    unavailable.append(exc.reason)
                await anyio.sleep(0.02)  # a pause before looking it up, not a wait for something
                try:  # did it land? ask the server for the entity's last event
                    stored = await journal.read("thing", entity_id, from_seq=head + 1)
                except JournalError:
                    continue  # still away: ask again on the next round
                if stored and stored[0].payload == payload:
                    acknowledged[entity_id].append(payload)
                    landed_unseen += isinstance(exc, Unavailable)
                    op += 1
                head += len(stored)
                continue
            acknowledged[entity_id].append(payload)
            op, head = op + 1, head + 1
            if restarted_at is not None:
                oks_after.append(time.monotonic())
            await anyio.lowlevel.checkpoint()

    try:
        async with JetStreamJournal(server.url) as journal:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for k in range(WRITERS):
                        tg.start_soon(writer, journal, f"w{k}")
                    await eventually(lambda: all(acknowledged.values()), what="every writer appending")
                    await server.stop(kill=True)  # no flush, no goodbye, in the middle of the load
                    await anyio.sleep(0.5)  # the outage itself, on purpose
                    await server.start()  # same port and store directory
                    restarted_at = time.monotonic()
                    await eventually(lambda: bool(oks_after), RECOVER_WITHIN, "appends ok again after the restart")
                    with anyio.move_on_after(10):  # pacing, not a check: load on for 50 appends a writer
                        while len(oks_after) < 50 * WRITERS:
                            await anyio.sleep(0.05)
                    stop.set()
            stored = await journal.read_all(1, limit=100_000)
    finally:
        await server.stop()

    recovery = oks_after[0] - restarted_at if oks_after else float("inf")
    by_entity: dict[str, list[Envelope]] = {}
    for env in stored:
        by_entity.setdefault(env.entity_id, []).append(env)
    acked = sum(len(v) for v in acknowledged.values())
    payloads = [e.payload for e in stored]
    twice = len(payloads) - len(set(payloads))
    lost = sum(1 for k, v in acknowledged.items() for p in v if p not in {e.payload for e in by_entity.get(k, [])})
    print(
        f"\nNATS restart under load: recovery {recovery:.3f} s after the restart; acknowledged {acked}, "
        f"stored {len(stored)}, stored twice {twice}, lost {lost}; {len(unavailable)} unavailable answers "
        f"({sorted(set(unavailable))}, {landed_unseen} of them stored after all)"
    )
    assert unavailable, "the outage was seen as Unavailable"
    assert lost == 0 and twice == 0
    for entity_id, envs in by_entity.items():
        assert [e.seq for e in envs] == list(range(1, len(envs) + 1)), f"{entity_id}: no gaps"
        assert [e.payload for e in envs] == acknowledged[entity_id], f"{entity_id}: exactly what was acknowledged"
    assert [e.position for e in stored] == sorted(e.position for e in stored)
