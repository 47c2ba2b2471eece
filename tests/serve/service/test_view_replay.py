"""A view replay asked while the view is failing and waiting to be restarted: the restart rebuilds
it first and the replay returns (it used to wait on the cancel of a scope that no longer ran)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from support.waiting import eventually

from entities import app
from runtime import MemoryViewStore, Service, SqliteJournal, Unavailable
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.view_store import Work

pytestmark = pytest.mark.anyio

VIEW = "posts_by_author"


class FlakyStore(MemoryViewStore):
    """The memory store, away while `failing` is set (a view store's outage)."""

    failing = False
    transactions = 0

    async def transact(self, view: str, work: Work) -> None:
        if self.failing:
            raise Unavailable("view store away")
        self.transactions += 1
        await super().transact(view, work)


async def test_a_replay_asked_while_the_view_restarts_rebuilds_it_and_returns(tmp_path: Path) -> None:
    store = FlakyStore()
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        SqliteJournal(tmp_path / "j.db") as journal,
        Service(app, journal, nats_url=server.url, view_store=store) as svc,
    ):
        await svc.runtime.ask("post", "p1", "publish", {"author": "ann", "text": "hi"})

        async def applied(posts: int) -> bool:
            row = await svc.view(VIEW).get("ann")
            return row is not None and row.posts == posts

        await eventually(lambda: applied(1), what="p1 in the view")
        store.failing = True
        await svc.runtime.ask("post", "p2", "publish", {"author": "ann", "text": "again"})
        await eventually(lambda: not svc._views.running(VIEW), what="the view failing, waiting for its restart")

        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def replay() -> None:
                assert await svc.replay(VIEW)
                done.set()

            tg.start_soon(replay)
            await anyio.sleep(0.2)  # pacing: the replay is asked while the view is down
            before = store.transactions
            store.failing = False
            with anyio.fail_after(30):
                await done.wait()
        assert store.transactions > before, "rebuilt (and run) once the store was back"
        await eventually(lambda: applied(2), what="both posts in the rebuilt view, once each")
