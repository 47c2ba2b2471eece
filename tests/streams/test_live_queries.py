"""Live queries: a snapshot, then every change to the result, with no gap and no double, across a
view rebuild (`Service.replay`); a subscriber that falls behind is told to resync."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from support.waiting import eventually

from entities.social import AuthorPosts, Post, PostsByAuthor, Profile, Published
from runtime import App, Envelope, SqliteJournal, Unavailable
from runtime.model.entity import model_of
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.query import Ge
from runtime.streams.query_live import Batch, Change, Changes, Resync, Snapshot, live
from runtime.streams.view import ViewRunner
from runtime.streams.view_store import MemoryViewStore, SqliteViewStore
from runtime.wire.protocol import event_headers, event_subject, events_filter, stream_name

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


async def _publish_raw(nc: NATS, start: int, n: int) -> None:
    """Posts p{start}… straight onto the post stream, as the outbox publishes them."""
    codec = model_of(Post).codec
    for i in range(start, start + n):
        env = Envelope(
            entity_type="post", entity_id=f"p{i}", seq=1, position=i + 1, name="Published", version=1,
            payload=codec.encode(Published(f"a{i % 2}", "x")), recorded_at=time.time_ns(),
        )  # fmt: skip
        await nc.jetstream().publish(
            event_subject("lq", "post", env.entity_id), env.payload, headers=event_headers(env)
        )


async def test_a_live_query_is_told_to_resync_when_another_runner_moved_the_view_on(nc: NATS) -> None:
    """Two runners of one view over one store, as two members taking turns with its singleton: the
    first one's live subscribers cannot know what the second committed, so when the first runs the
    view again they are told to resync; a live query where the view is not running is refused."""
    await nc.jetstream().add_stream(name=stream_name("lq", "post"), subjects=[events_filter("lq", "post")])
    store = MemoryViewStore()
    first, second = (ViewRunner(Authors, store, nc, prefix="lq") for _ in range(2))
    with pytest.raises(Unavailable, match="not running in this process"):
        async with first.query.live(Ge("posts", 1)):
            pass
    await _publish_raw(nc, 0, 4)

    async def run(runner: ViewRunner, scope: anyio.CancelScope) -> None:
        with scope:
            await runner.run()

    def posts(rows: dict[str, AuthorPosts]) -> dict[str, int]:
        return {k: r.posts for k, r in rows.items()}

    async with anyio.create_task_group() as tg:
        turns = [anyio.CancelScope() for _ in range(3)]
        tg.start_soon(run, first, turns[0])
        await eventually(lambda: first.applied == 4, what="the first runner applied the posts")
        async with first.query.live(Ge("posts", 1)) as events:
            snapshot = await anext(events)
            assert isinstance(snapshot, Snapshot) and posts(snapshot.rows) == {"a0": 2, "a1": 2}
            turns[0].cancel()  # the first member lets the view go
            await eventually(lambda: not first.running, what="the first runner stopped")
            tg.start_soon(run, second, turns[1])  # the second takes it over and moves it on
            await _publish_raw(nc, 4, 2)
            await eventually(lambda: second.applied == 2, what="the second runner applied the new posts")
            turns[1].cancel()
            await eventually(lambda: not second.running, what="the second runner stopped")
            tg.start_soon(run, first, turns[2])  # the first runs it again
            with anyio.fail_after(10):
                told = await anext(events)
            assert isinstance(told, Resync) and "moved on elsewhere" in told.reason, told
        async with first.query.live(Ge("posts", 1)) as again:  # a new subscription is right
            fresh = await anext(again)
            assert isinstance(fresh, Snapshot) and posts(fresh.rows) == {"a0": 3, "a1": 3}
        turns[2].cancel()
