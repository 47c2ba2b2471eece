"""The seed's social scenario across a SIGKILL: 1,000 posts by 50 authors, the runtime killed midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from support.waiting import eventually

from entities import app
from runtime import SqliteJournal
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.view_store import SqliteViewStore

pytestmark = pytest.mark.anyio

POSTS, AUTHORS = 1000, 50
ROOT = Path(__file__).resolve().parents[2]


def _worker(nats_url: str, data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.streams.social_worker", nats_url, str(data), str(POSTS), str(AUTHORS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def _stored(data: Path) -> int:
    if not (data / "journal.db").exists():
        return 0
    async with SqliteJournal(data / "journal.db") as journal:
        return await journal.last_position()


async def test_counts_are_exact_after_a_kill_in_the_middle(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    data = tmp_path / "data"
    first = _worker(nats_server.url, data)
    try:

        async def midway() -> bool:
            return await _stored(data) >= 300 or first.poll() is not None

        await eventually(midway, timeout=60, what="the first run to store 300 events")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert first.returncode == -signal.SIGKILL, "the worker was killed, not finished"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        assert first.stdout is not None
        first.stdout.close()
    stored_at_kill = await _stored(data)
    assert 300 <= stored_at_kill < 2 * POSTS

    second = _worker(nats_server.url, data)  # re-sends every post: command ids make that safe
    out, _ = await anyio.to_thread.run_sync(second.communicate)
    assert second.returncode == 0 and b"sent" in out

    truth = {f"author-{a}": POSTS // AUTHORS for a in range(AUTHORS)}
    async with (
        SqliteJournal(data / "journal.db") as journal,
        SqliteViewStore(data / "views.db") as views,
        Service(app, journal, nats_url=nats_server.url, view_store=views) as svc,
    ):

        async def consistent() -> bool:
            rows = await svc.view("posts_by_author").all()
            if {k: r.posts for k, r in rows.items()} != truth:
                return False
            counts = {a: (await svc.runtime.ask("profile", a, "get")).result.posts for a in truth}
            return counts == truth

        await eventually(consistent, timeout=60, what="every profile count and the view to equal 20")
        # Exactly 1,000 posts were stored, whatever the kill interrupted.
        posts = [e for e in await _all(journal) if e.entity_type == "post"]
        assert len(posts) == POSTS
        assert len({e.entity_id for e in posts}) == POSTS


async def _all(journal: SqliteJournal) -> list:  # type: ignore[type-arg]
    from support.reading import journal_events

    return await journal_events(journal)
