"""Live queries: a snapshot, then every change to the result, with no gap and no double, across a
view rebuild (`Service.replay`); a subscriber that falls behind is told to resync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from support.waiting import eventually

from entities.social import AuthorPosts, Post, PostsByAuthor, Profile
from runtime import App, SqliteJournal
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.query import Ge
from runtime.streams.query_live import Batch, Change, Changes, Resync, Snapshot, live
from runtime.streams.view_store import SqliteViewStore

pytestmark = pytest.mark.anyio


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", "author"]):
    """The example's view, queried by its count of posts."""


async def publish(svc: Service, start: int, n: int) -> None:
    for i in range(start, start + n):
        author = f"a{i % 5}"
        await svc.runtime.ask("post", f"p{i}", "publish", {"author": author, "text": "x"}, command_id=f"c{i}")


def follow(result: dict[str, Any], event: Any) -> None:
    """Apply one live event to a copy of the result, refusing a double or a gap."""
    if isinstance(event, Snapshot):
        result.clear()
        result.update(event.rows)
    elif event.kind == "added":
        assert event.key not in result, f"{event.key} added twice"
        result[event.key] = event.row
    elif event.kind == "changed":
        assert event.key in result, f"{event.key} changed before it was added"
        result[event.key] = event.row
    else:
        assert result.pop(event.key, None) is not None, f"{event.key} removed but not there"


async def test_a_live_query_follows_its_result_across_a_rebuild(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    app = App("live", entities=[Post, Profile], views=[Authors])
    async with (
        SqliteJournal(tmp_path / "j.db") as journal,
        SqliteViewStore(tmp_path / "views.db") as store,
        Service(app, journal, nats_url=nats_server.url, view_store=store) as svc,
    ):
        authors = svc.view("authors")
        await publish(svc, 0, 12)
        await eventually(lambda: svc.views["authors"].applied == 12, what="the first posts applied")
        result: dict[str, AuthorPosts] = {}
        kinds: list[str] = []
        async with authors.live(Ge("posts", 3)) as events, anyio.create_task_group() as tg:

            async def read() -> None:
                async for event in events:
                    follow(result, event)
                    assert not isinstance(event, Resync), "nobody fell behind here"
                    kinds.append(event.kind if isinstance(event, Change) else "Snapshot")

            tg.start_soon(read)
            await publish(svc, 12, 20)  # while the snapshot may still be read: no gap, no double
            assert await svc.replay("authors")
            await publish(svc, 32, 8)

            async def agrees() -> bool:
                truth = {k: v for k, v in (await authors.all()).items() if v.posts >= 3}
                return len(truth) == 5 and sum(r.posts for r in truth.values()) == 40 and result == truth

            await eventually(agrees, what="the live result to match the view after the rebuild")
            tg.cancel_scope.cancel()
        assert kinds[0] == "Snapshot"
        assert "removed" in kinds and "added" in kinds and "changed" in kinds, kinds
        assert svc.views["authors"].changes.subscribers == 0, "leaving the block unsubscribes"


async def test_a_subscriber_that_falls_behind_is_told_to_resync() -> None:
    changes = Changes(buffer=2)
    lock = anyio.Lock()
    row = msgspec.json.encode(AuthorPosts("ann", 1))

    async def snapshot() -> dict[str, bytes]:
        return {"ann": row}

    decode = msgspec.json.Decoder(AuthorPosts).decode
    async with live(changes, lock, snapshot, lambda: 7, None, decode) as events:
        for v in range(8, 12):  # four batches into a buffer of two, nobody reading
            changes.publish(Batch(v, {f"k{v}": row}))
        got = [event async for event in events]
    assert isinstance(got[0], Snapshot) and got[0].version == 7
    assert [e.key for e in got[1:-1] if isinstance(e, Change)] == ["k8", "k9"]
    assert isinstance(got[-1], Resync) and "behind" in got[-1].reason
    assert changes.subscribers == 0
