"""A view that starts (or is rebuilt) after old events moved to the archive still applies every event once:
its catch-up reads the archiving journal by position, archived events included, then follows its stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from support.waiting import eventually

from entities.social import Post, Published
from runtime import Envelope, Journal, Snapshot, SqliteJournal, SqliteViewStore
from runtime.archive import Archive, Archiver, ArchiverSettings, ArchivingJournal
from runtime.model.entity import model_of
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.handlers import on
from runtime.streams.publisher import CHECKPOINT, Publisher
from runtime.streams.view import Rows, View, ViewRunner

pytestmark = pytest.mark.anyio

PREFIX = "ar"
DAY = 86400 * 10**9


class Seen(msgspec.Struct):
    times: int = 0


class Counting(View[Seen], name="counting", sources=[Post]):
    """One row per event applied, counting how often: exactly once means every row is 1."""

    @on
    def published(self, rows: Rows[Seen], e: Published, env: Envelope) -> None:
        key = f"{env.entity_id}/{env.seq}"
        rows.put(key, Seen((rows.get(key) or Seen()).times + 1))


@pytest.fixture
async def nc(tmp_path: Path) -> AsyncIterator[NATS]:
    async with EmbeddedNats(tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        yield client
        await client.close()


async def _posts(journal: Journal, start: int, n: int, recorded_at: int) -> None:
    codec = model_of(Post).codec
    for i in range(start, start + n):
        env = Envelope(
            entity_type="post", entity_id=f"p{i}", seq=1, name="Published", version=1,
            payload=codec.encode(Published(f"a{i % 7}", "x")), recorded_at=recorded_at,
        )  # fmt: skip
        await journal.append([env], 0)
        snapshot = Snapshot(entity_type="post", entity_id=f"p{i}", seq=1, payload=b"{}", recorded_at=0)
        await journal.save_snapshot(snapshot)


async def _rows(store: SqliteViewStore) -> dict[str, int]:
    out: dict[str, int] = {}
    after = ""
    while page := await store.scan("counting", after=after, limit=1000):
        out.update((k, msgspec.json.decode(v, type=Seen).times) for k, v in page)
        after = page[-1][0]
    return out


async def test_a_new_view_and_a_rebuild_see_archived_events_once(tmp_path: Path, nc: NATS) -> None:
    async with SqliteJournal(tmp_path / "j.db") as bare, SqliteViewStore(tmp_path / "v.db") as store:
        archive = Archive(f"file://{tmp_path / 'archive'}")
        journal = ArchivingJournal(bare, archive)
        await _posts(journal, 0, 500, time.time_ns() - 30 * DAY)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Publisher(journal, nc, prefix=PREFIX, entity_types=["post"]).run)
            await eventually(lambda: _published(bare, 500), what="the outbox published the old posts")
            moved = await Archiver(bare, archive, ArchiverSettings(after=86400), guards=[CHECKPOINT]).run_once()
            assert moved.events == 500
            assert await bare.read_all(1) == []  # the journal holds none of them now
            await _posts(journal, 500, 100, time.time_ns())

            runner = ViewRunner(Counting, store, nc, prefix=PREFIX, journal=journal, catchup_behind=100)
            async with anyio.create_task_group() as views:
                views.start_soon(runner.run)
                await eventually(lambda: _all_once(store, 600), what="600 events in the view")
                views.cancel_scope.cancel()
            assert runner.from_journal >= 500, "the catch-up read the archived events by position"

            await runner.rebuild()  # memoir replay VIEW
            again = ViewRunner(Counting, store, nc, prefix=PREFIX, journal=journal, catchup_behind=100)
            async with anyio.create_task_group() as views:
                views.start_soon(again.run)
                await eventually(lambda: _all_once(store, 600), what="600 events in the rebuilt view")
                views.cancel_scope.cancel()
            tg.cancel_scope.cancel()


async def _published(journal: Journal, n: int) -> bool:
    return await journal.load_checkpoint(CHECKPOINT) >= n


async def _all_once(store: SqliteViewStore, n: int) -> bool:
    rows = await _rows(store)
    if len(rows) < n:
        return False
    assert rows == {f"p{i}/1": 1 for i in range(n)}, "every event applied, none twice"
    return True
