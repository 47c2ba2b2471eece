"""Views and consumers over real JetStream: catch-up, rebuild, exactly-once effects, retries, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import msgspec
import nats
import pytest
from support.views import drop_view_schema, open_view_store_for_test
from support.waiting import eventually

from entities.social import AuthorPosts, CountPosts, Post, PostsByAuthor, Profile, Published
from runtime import App, SqliteJournal
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.consumer import Consumer, Context
from runtime.streams.handlers import on
from runtime.streams.view_store import SqliteViewStore

pytestmark = pytest.mark.anyio


async def _publish_posts(svc: Service, n: int, authors: int) -> dict[str, int]:
    truth: dict[str, int] = {}
    for i in range(n):
        author = f"author-{i % authors}"
        await svc.runtime.ask("post", f"p{i}", "publish", {"author": author, "text": f"post {i}"}, command_id=f"c{i}")
        truth[author] = truth.get(author, 0) + 1
    return truth


async def _view_counts(svc: Service) -> dict[str, int]:
    return {k: row.posts for k, row in (await svc.view("posts_by_author").all()).items()}


async def test_a_view_added_later_catches_up_from_the_start(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        async with Service(App("before", entities=[Post, Profile]), journal, nats_url=nats_server.url) as svc:
            truth = await _publish_posts(svc, 60, 7)
        # A new release adds the view: the history flows into it.
        async with SqliteViewStore(tmp_path / "views.db") as store:
            app = App("after", entities=[Post, Profile], views=[PostsByAuthor])
            async with Service(app, journal, nats_url=nats_server.url, view_store=store) as svc:

                async def caught_up() -> bool:
                    return await _view_counts(svc) == truth

                await eventually(caught_up, what="the new view to catch up")
                row = await svc.view("posts_by_author").get("author-0")
                assert row == AuthorPosts("author-0", truth["author-0"], "p56")
                # Rebuild from scratch gives the same rows, not doubled ones.
                await svc.views["posts_by_author"].rebuild()
            async with Service(app, journal, nats_url=nats_server.url, view_store=store) as svc:
                await eventually(caught_up, what="the rebuilt view")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_view_applies_each_event_once_across_restarts(
    kind: str, tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    app = App("v", entities=[Post, Profile], views=[PostsByAuthor])
    async with (
        SqliteJournal(tmp_path / "j.db") as journal,
        open_view_store_for_test(kind, tmp_path) as store,
    ):
        for round_ in range(3):  # each restart resumes; nothing is counted twice
            async with Service(app, journal, nats_url=nats_server.url, view_store=store) as svc:
                for i in range(20):
                    await svc.runtime.ask("post", f"r{round_}-{i}", "publish", {"author": "ann", "text": "x"})

                async def done(expected: int = 20 * (round_ + 1)) -> bool:
                    return await _view_counts(svc) == {"ann": expected}

                await eventually(done, what=f"round {round_}")
    if kind == "postgres":
        await drop_view_schema(tmp_path)


class Flaky(Consumer, name="flaky", sources=[Post]):
    """Fails twice on every event of post `flaky-*`, forever on `poison`; counts into profiles."""

    attempts: ClassVar[dict[str, int]] = {}  # on the class, where the test reads it

    @on
    async def published(self, ctx: Context, e: Published) -> None:
        post = ctx.envelope.entity_id
        n = self.attempts[post] = self.attempts.get(post, 0) + 1
        if post == "poison" or (post.startswith("flaky") and n <= 2):
            raise RuntimeError(f"cannot handle {post} (attempt {n})")
        await ctx.send("profile", e.author, "count_post", {"post_id": post})
        if post.startswith("flaky"):
            # Sending again (as a redelivery would) must not count twice: same command id.
            await Context(ctx.sender, ctx.envelope).send("profile", e.author, "count_post", {"post_id": post})


async def test_consumer_retries_then_parks_poison_without_stalling(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    Flaky.max_attempts = 3
    Flaky.backoff = 0.05
    Flaky.attempts = {}
    app = App("c", entities=[Post, Profile], consumers=[Flaky])
    async with SqliteJournal(tmp_path / "j.db") as journal, Service(app, journal, nats_url=nats_server.url) as svc:
        rt = svc.runtime
        await rt.ask("post", "flaky-1", "publish", {"author": "bob", "text": "x"})
        await rt.ask("post", "poison", "publish", {"author": "bob", "text": "x"})
        for i in range(5):
            await rt.ask("post", f"ok-{i}", "publish", {"author": "bob", "text": "x"})

        async def counted() -> bool:
            return (await rt.ask("profile", "bob", "get")).result.posts == 6

        await eventually(counted, what="bob's 6 countable posts")
        runner = svc.consumers["flaky"]
        await eventually(lambda: _true(runner.dead_lettered == 1), what="the poison event to be parked")
        assert Flaky.attempts["poison"] == 3
        assert Flaky.attempts["flaky-1"] == 3

    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    parked = await js.get_last_msg("MEMOIR_DEADLETTER", "memoir.deadletter.flaky")
    await client.close()
    assert "cannot handle poison (attempt 3)" in parked.headers["Memoir-Error"]
    assert parked.headers["Memoir-Original-Subject"] == "memoir.events.post.poison"
    assert msgspec.json.decode(parked.data) == {"author": "bob", "text": "x"}


async def _true(value: bool) -> bool:
    return value


async def test_profile_counts_follow_the_post_stream(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    app = App("s", entities=[Post, Profile], views=[PostsByAuthor], consumers=[CountPosts])
    async with (
        SqliteJournal(tmp_path / "j.db") as journal,
        SqliteViewStore(tmp_path / "v.db") as store,
        Service(app, journal, nats_url=nats_server.url, view_store=store) as svc,
    ):
        truth = await _publish_posts(svc, 100, 10)
        await svc.runtime.ask("post", "p0", "delete")
        truth["author-0"] -= 1

        async def consistent() -> bool:
            profiles = {a: (await svc.runtime.ask("profile", a, "get")).result.posts for a in truth}
            return profiles == truth and await _view_counts(svc) == truth

        await eventually(consistent, what="profiles and view to equal the true counts")
