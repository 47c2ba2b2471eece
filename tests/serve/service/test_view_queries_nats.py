"""View queries over NATS (`{prefix}.view.{name}.query|count`), their `invalid` answers, and live
results from the change notices (`….changes`) across a rebuild, as a subscriber in any language
would follow them: subscribe, query, apply the notices above the answer's version."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS
from support.waiting import eventually

from entities.social import Post, PostsByAuthor, Profile
from runtime import App
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.view_store import SqliteViewStore
from runtime.testing.harness import served

pytestmark = pytest.mark.anyio
P = "vq"


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", ("author", "posts")]):
    """The example's view, queried by author and by its count of posts."""


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, NATS]]:
    app = App("vq", entities=[Post, Profile], views=[Authors])
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        SqliteViewStore(tmp_path / "views.db") as store,
        served(app, server.url, prefix=P, view_store=store) as svc,
    ):
        nc = await nats.connect(server.url)
        yield svc, nc
        await nc.close()


async def ask(nc: NATS, op: str, body: dict[str, Any]) -> Any:
    msg = await nc.request(f"{P}.view.authors.{op}", json.dumps(body).encode(), timeout=5)
    return json.loads(msg.data)


async def publish(svc: Service, start: int, n: int) -> None:
    for i in range(start, start + n):
        await svc.runtime.ask("post", f"p{i}", "publish", {"author": f"a{i % 4}", "text": "x"}, command_id=f"c{i}")


async def test_query_count_and_invalid_over_nats(service: tuple[Service, NATS]) -> None:
    svc, nc = service
    await publish(svc, 0, 10)  # a0, a1: 3 posts; a2, a3: 2
    await eventually(lambda: svc.views["authors"].applied == 10, what="the posts applied")
    where = {"op": ">=", "field": "posts", "value": 3}
    first = await ask(nc, "query", {"where": where, "order_by": ["-posts", "author"], "limit": 1})
    assert first["ok"] and [k for k, _ in first["result"]["rows"]] == ["a0"]
    assert first["result"]["rows"][0][1] == {"author": "a0", "posts": 3, "latest": "p8"}
    assert first["result"]["version"] >= 1
    second = await ask(nc, "query", {"where": where, "order_by": ["-posts", "author"], "page": first["result"]["next"]})
    assert [k for k, _ in second["result"]["rows"]] == ["a1"] and second["result"]["next"] is None
    assert (await ask(nc, "count", {"where": {"op": "in", "field": "author", "values": ["a2", "a3"]}}))["result"] == 2

    undeclared = await ask(nc, "query", {"where": {"op": "=", "field": "latest", "value": "p1"}})
    assert undeclared["ok"] is False and undeclared["error"]["code"] == "invalid"
    assert "'latest' is not declared for queries" in undeclared["error"]["message"]
    bad_op = await ask(nc, "query", {"where": {"op": "~", "field": "posts", "value": 1}})
    assert bad_op["error"]["code"] == "invalid" and "op" in bad_op["error"]["message"]
    bad_type = await ask(nc, "count", {"where": {"op": "=", "field": "posts", "value": "3"}})
    assert bad_type["error"]["code"] == "invalid" and "number values" in bad_type["error"]["message"]


async def test_live_over_nats_follows_the_result_across_a_rebuild(service: tuple[Service, NATS]) -> None:
    svc, nc = service
    await publish(svc, 0, 8)
    await eventually(lambda: svc.views["authors"].applied == 8, what="the posts applied")
    notices = await nc.subscribe(f"{P}.view.authors.changes", max_msgs=0)  # 1: subscribe first
    answer = await ask(nc, "query", {"limit": 1000})  # 2: then the snapshot, at its version
    result = dict(answer["result"]["rows"])
    version = answer["result"]["version"]
    seen: list[int] = []

    async def apply() -> None:  # 3: the notices above that version, in order; a gap would mean resync
        nonlocal version
        async for msg in notices.messages:
            notice = json.loads(msg.data)
            if notice["version"] <= version:
                continue
            assert notice["version"] == version + 1, "a notice lost: this subscriber would resync"
            version = notice["version"]
            seen.append(version)
            if notice["reset"]:
                result.clear()
            for key, row in notice["rows"].items():
                if row is None:
                    result.pop(key, None)
                else:
                    result[key] = row

    async with anyio.create_task_group() as tg:
        tg.start_soon(apply)
        await publish(svc, 8, 12)
        assert await svc.replay("authors")
        await publish(svc, 20, 4)

        async def agrees() -> bool:
            truth = {
                k: {"author": v.author, "posts": v.posts, "latest": v.latest}
                for k, v in (await svc.view("authors").all()).items()
            }
            return sum(r["posts"] for r in truth.values()) == 24 and result == truth

        await eventually(agrees, what="the followed result to match the view after the rebuild")
        tg.cancel_scope.cancel()
    assert seen, "notices were applied"
