"""The pieces behind the pytest plugin, under anyio with a real nats-server: InOwnTask, served, caught_up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import nats
import pytest

from entities.social import CountPosts, Post, PostsByAuthor, Profile, Published
from runtime import App, Client, ConfigError, Consumer, Context, MemoryJournal, Rejected, Runtime, on
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.testing import InOwnTask, caught_up, served

pytestmark = pytest.mark.anyio

SOCIAL = App("social", entities=[Post, Profile], views=[PostsByAuthor], consumers=[CountPosts])


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path_factory.mktemp("nats")) as s:
        yield s


# -- InOwnTask: what lets pytest-asyncio's setup and teardown, two tasks, share one task group ---------


async def test_in_own_task_enters_and_exits_in_one_task_when_its_owner_uses_two() -> None:
    async with MemoryJournal() as journal:
        kept = InOwnTask(Runtime(App("a", entities=[Post]), journal))
        # pytest-asyncio's shape: setup in one task, teardown in another; without InOwnTask, anyio
        # refuses to exit the runtime's task group from a task that did not enter it.
        runtime = await asyncio.create_task(kept.__aenter__())
        reply = await runtime.ask("post", "p1", "publish", {"author": "ann", "text": "hi"})
        await asyncio.create_task(kept.__aexit__(None, None, None))
    assert reply.seq == 1
    with pytest.raises(Exception, match="not running"):
        await runtime.ask("post", "p2", "publish", {"author": "ann", "text": "hi"})


@contextlib.asynccontextmanager
async def _fails_on_entry() -> AsyncIterator[None]:
    raise LookupError("no such thing")
    yield


@contextlib.asynccontextmanager
async def _fails_while_open(started: list[str]) -> AsyncIterator[str]:
    started.append("in")
    yield "value"
    raise LookupError("broke on the way out")


async def test_in_own_task_passes_errors_on_and_leaves_no_task_behind() -> None:
    before = len(asyncio.all_tasks())
    with pytest.raises(LookupError, match="no such thing"):
        async with InOwnTask(_fails_on_entry()):
            pass
    started: list[str] = []
    with pytest.raises(LookupError, match="broke on the way out"):
        async with InOwnTask(_fails_while_open(started)) as value:
            assert value == "value"
    assert started == ["in"]
    assert len(asyncio.all_tasks()) == before


@contextlib.asynccontextmanager
async def _slow_to_enter(started: asyncio.Event, left: list[str]) -> AsyncIterator[None]:
    started.set()
    try:
        await asyncio.Event().wait()  # never set: entering takes forever
        yield
    finally:
        left.append("cleaned up")


async def test_in_own_task_cancelled_while_entering_stops_the_entering_task() -> None:
    before = len(asyncio.all_tasks())
    started, left = asyncio.Event(), list[str]()
    entering = asyncio.create_task(InOwnTask(_slow_to_enter(started, left)).__aenter__())
    await started.wait()
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    assert left == ["cleaned up"]
    assert len(asyncio.all_tasks()) == before


# -- served: the app as `memoir run` serves it, under a prefix of its own ----------------------------


async def test_served_answers_commands_and_view_queries_over_nats(server: EmbeddedNats) -> None:
    async with served(SOCIAL, server.url, prefix="t_one") as svc, Client(server.url, prefix="t_one") as client:
        reply = await client.send("post", "p1", "publish", {"author": "ann", "text": "hello"})
        assert (reply.result, reply.seq) == (0, 1)
        with pytest.raises(Rejected, match="already published"):
            await client.send("post", "p1", "publish", {"author": "ann", "text": "again"})
        await caught_up(svc)
        assert (await svc.view("posts_by_author").get("ann")) is not None
        answer = await client.request("t_one.view.posts_by_author.get", b'{"key": "ann"}')
        assert answer.result == {"author": "ann", "posts": 1, "latest": "p1"}
        assert (await client.send("profile", "ann", "get")).result == {"name": None, "posts": 1}


async def test_two_prefixes_on_one_server_do_not_see_each_other_and_leave_no_streams(server: EmbeddedNats) -> None:
    async with (
        served(SOCIAL, server.url, prefix="t_left") as left,
        served(SOCIAL, server.url, prefix="t_right") as right,
    ):
        await left.runtime.ask("post", "p1", "publish", {"author": "ann", "text": "left"})
        await right.runtime.ask("post", "p1", "publish", {"author": "bob", "text": "right"})  # seq 1 again
        await caught_up(left)
        await caught_up(right)
        assert [k for k, _ in await left.view("posts_by_author").scan()] == ["ann"]
        assert [k for k, _ in await right.view("posts_by_author").scan()] == ["bob"]
    nc = await nats.connect(server.url)
    try:
        names = [info.config.name for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    assert not [n for n in names if n and n.startswith(("T_LEFT_", "T_RIGHT_"))]


# -- caught_up: bounded, and says who is behind --------------------------------------------------------


class Stuck(Consumer, name="stuck", sources=[Post]):
    """Fails every event, with a retry delay far longer than the test waits."""

    max_attempts: ClassVar[int] = 100
    backoff: ClassVar[float] = 60.0

    @on
    async def published(self, ctx: Context, e: Published) -> None:
        raise RuntimeError("not today")


async def test_caught_up_waits_for_the_chain_of_consumer_commands(server: EmbeddedNats) -> None:
    async with served(SOCIAL, server.url, prefix="t_chain") as svc:
        for i in range(20):
            await svc.runtime.ask("post", f"p{i}", "publish", {"author": f"a{i % 3}", "text": "x"})
        await caught_up(svc, timeout=20)
        # Every post counted on its author's profile: the consumer's commands are in, not on the way.
        counts = [(await svc.runtime.ask("profile", f"a{n}", "get")).result.posts for n in range(3)]
        assert counts == [7, 7, 6]
        assert {k: r.posts for k, r in (await svc.view("posts_by_author").all()).items()} == {
            "a0": 7,
            "a1": 7,
            "a2": 6,
        }


async def test_caught_up_fails_naming_who_is_behind(server: EmbeddedNats, tmp_path: Path) -> None:
    app = App("stuck", entities=[Post], views=[PostsByAuthor], consumers=[Stuck])
    async with served(app, server.url, prefix="t_stuck") as svc:
        await svc.runtime.ask("post", "p1", "publish", {"author": "ann", "text": "x"})
        await caught_up(svc, "posts_by_author")  # the view is not stuck
        with pytest.raises(
            AssertionError, match=r"not caught up after 0\.5s: consumer stuck on post events: .*1 not ack"
        ):
            await caught_up(svc, timeout=0.5)
        with pytest.raises(
            KeyError, match=r"no view or consumer 'nope' in this service \(known: \['posts_by_author', 'stuck'\]\)"
        ):
            await caught_up(svc, "nope")


async def test_an_error_in_the_served_block_comes_out_as_itself(server: EmbeddedNats) -> None:
    with pytest.raises(LookupError, match="from the test"):  # not wrapped in an ExceptionGroup
        async with served(SOCIAL, server.url, prefix="t_error"):
            raise LookupError("from the test")


async def test_served_and_caught_up_on_the_jetstream_journal(server: EmbeddedNats) -> None:
    from runtime.journal.jetstream import JetStreamJournal

    # The journal is the stream: no outbox, and every type shares one stream the subscribers filter.
    async with (
        JetStreamJournal(f"{server.url}?prefix=t_js") as journal,
        served(SOCIAL, server.url, prefix="t_js", journal=journal) as svc,
    ):
        assert svc.publisher is None
        for i in range(6):
            await svc.runtime.ask("post", f"p{i}", "publish", {"author": "ann", "text": "x"})
        await caught_up(svc)
        assert (await svc.runtime.ask("profile", "ann", "get")).result.posts == 6
        assert (await svc.view("posts_by_author").get("ann")) is not None


async def test_a_bad_prefix_is_refused_naming_it_before_anything_starts(server: EmbeddedNats) -> None:
    with pytest.raises(ConfigError, match=r"subject prefix 'my prefix' must be dot-separated tokens"):
        async with served(SOCIAL, server.url, prefix="my prefix"):
            pass
