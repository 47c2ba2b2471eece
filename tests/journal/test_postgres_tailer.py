"""PostgreSQL positions are safe for a tailer: two processes append concurrently while a third reads
"everything after P" in a loop; it sees every event exactly once, in order, none skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest

from runtime import Envelope
from runtime.journal.postgres import PostgresJournal

pytestmark = pytest.mark.anyio

ENTITIES, EVENTS = 20, 75  # per writer process: 1,500 events each
TESTS = Path(__file__).resolve().parents[1]


async def test_tailer_sees_every_event_once_in_order_under_two_writer_processes(postgres_url: str) -> None:
    schema = f"t_tail_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}?schema={schema}"
    try:
        async with PostgresJournal(url) as journal:  # creates the schema before the writers race
            env = {**os.environ, "PYTHONPATH": f"{TESTS.parent}:{TESTS}"}
            writers = [
                subprocess.Popen(
                    [sys.executable, "-m", "journal.pg_writer", url, tag, str(ENTITIES), str(EVENTS)],
                    cwd=TESTS,
                    env=env,
                )
                for tag in ("left", "right")
            ]
            seen: list[Envelope] = []
            with anyio.fail_after(120):
                while True:
                    done = all(w.poll() is not None for w in writers)
                    page = await journal.read_all(seen[-1].position + 1 if seen else 1, limit=200)
                    seen.extend(page)
                    if done and not page:
                        break
                    if not page:
                        await anyio.sleep(0.005)  # the tailer's own poll interval: the reader under test
            assert [w.returncode for w in writers] == [0, 0]
            final: list[Envelope] = []
            while page := await journal.read_all(final[-1].position + 1 if final else 1, limit=1000):
                final.extend(page)
        assert len(final) == 2 * ENTITIES * EVENTS
        assert [e.position for e in seen] == [e.position for e in final], "the tailer skipped or repeated nothing"
        assert [e.position for e in final] == list(range(1, len(final) + 1)), "gap-free, strictly increasing"
        for entity in {e.entity_id for e in final}:
            assert [e.seq for e in final if e.entity_id == entity] == list(range(1, EVENTS + 1))
    finally:
        conn = await asyncpg.connect(postgres_url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
