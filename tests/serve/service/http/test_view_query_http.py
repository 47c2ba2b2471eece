"""`GET /views/{view}?where=…&order_by=…&limit=…&page=…`: a view queried over HTTP by its declared
fields, the same query the NATS door and the CLI send; a bad one is a 400 `invalid` naming what
is wrong; the OpenAPI document types the parameters."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from support.served import serve
from support.waiting import eventually

from entities.social import Post, PostsByAuthor, Profile
from runtime import App
from runtime.serve.service import HttpGateway
from runtime.serve.service._service import Service
from runtime.serve.service.admin import Admin
from runtime.serve.service.specs.openapi import openapi

pytestmark = pytest.mark.anyio
TOKEN = "q" * 40


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", "author"]):
    """The example's view, queried by author and by its count of posts."""


APP = App("vqh", entities=[Post, Profile], views=[Authors])


@contextlib.asynccontextmanager
async def gateway(tmp: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
    async with serve(APP, tmp, None) as served, anyio.create_task_group() as tg:
        admin = Admin(served.svc)
        await admin.start()
        gw = HttpGateway(served.svc, token=TOKEN)
        port = await tg.start(gw.run)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as http:
                yield http, served.svc
        finally:
            await gw.stop()
            await admin.stop()


async def test_query_a_view_over_http(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, svc):
        for i, author in enumerate(["ann", "bob", "ann", "cy", "bob", "ann"]):
            await svc.runtime.ask("post", f"p{i}", "publish", {"author": author, "text": "x"})
        await eventually(lambda: svc.views["authors"].applied == 6, what="the posts applied")

        first = await http.get("/views/authors", params={"where": "posts >= 2", "order_by": "posts desc", "limit": 1})
        assert first.status_code == 200, first.text
        page = first.json()["result"]
        assert page["rows"] == [["ann", {"author": "ann", "posts": 3, "latest": "p5"}]] and page["next"]
        rest = await http.get(
            "/views/authors", params={"where": "posts >= 2", "order_by": "posts desc", "page": page["next"]}
        )
        assert rest.json()["result"]["rows"] == [["bob", {"author": "bob", "posts": 2, "latest": "p4"}]]
        assert rest.json()["result"]["next"] is None

        scan = await http.get("/views/authors", params={"limit": 2})  # no query parameter: the key-order scan
        assert [k for k, _ in scan.json()["result"]] == ["ann", "bob"]

        for params, message in [
            ({"where": 'latest = "p1"'}, "'latest' is not declared for queries"),
            ({"where": "posts >>= 2"}, "where: "),
            ({"order_by": "posts sideways"}, "asc or desc"),
            ({"order_by": "posts", "page": "not-a-token"}, "not one this view gave"),
        ]:
            bad = await http.get("/views/authors", params=params)
            assert bad.status_code == 400, (params, bad.text)
            assert bad.json()["error"]["code"] == "invalid" and message in bad.json()["error"]["message"]


def test_openapi_types_the_query_parameters() -> None:
    doc = openapi(APP)
    params = {p["name"]: p for p in doc["paths"]["/views/authors"]["get"]["parameters"]}
    assert {"where", "order_by", "page", "limit", "after"} <= set(params)
    assert params["where"]["schema"]["type"] == "string" and "prefix" in params["where"]["description"]
    pattern = re.compile(params["where"]["schema"]["pattern"])  # declared fields, each with its kind of value
    assert pattern.match('posts >= 2 and author prefix "a"') and not pattern.match('latest = "p1"')
    assert not pattern.match('posts = "2"')
    plain = openapi(App("plain", entities=[Post, Profile], views=[PostsByAuthor]))
    assert {p["name"] for p in plain["paths"]["/views/posts_by_author"]["get"]["parameters"]} == {"after", "limit"}


async def frames(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each SSE message, heartbeat comments skipped."""
    event, data = "", ""
    async for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and event:
            yield event, json.loads(data)
            event, data = "", ""


async def test_a_live_query_as_server_sent_events(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, svc):
        for i, author in enumerate(["ann", "ann", "bob"]):
            await svc.runtime.ask("post", f"p{i}", "publish", {"author": author, "text": "x"})
        await eventually(lambda: svc.views["authors"].applied == 3, what="the posts applied")
        params = {"live": "1", "where": "posts >= 2"}
        async with http.stream("GET", "/views/authors", params=params) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
            got = frames(response.aiter_lines())
            event, snapshot = await anext(got)
            assert event == "snapshot" and snapshot["rows"] == [["ann", {"author": "ann", "posts": 2, "latest": "p1"}]]
            await svc.runtime.ask("post", "p3", "publish", {"author": "bob", "text": "x"})  # bob enters
            await svc.runtime.ask("post", "p4", "publish", {"author": "ann", "text": "x"})  # ann changes
            assert await anext(got) == ("added", {"key": "bob", "row": {"author": "bob", "posts": 2, "latest": "p3"}})
            assert await anext(got) == ("changed", {"key": "ann", "row": {"author": "ann", "posts": 3, "latest": "p4"}})
            assert await svc.replay("authors")  # a rebuild: each row leaves, then comes back
            final = {
                "ann": {"author": "ann", "posts": 3, "latest": "p4"},
                "bob": {"author": "bob", "posts": 2, "latest": "p3"},
            }
            result = dict(final)
            removed: set[str] = set()
            with anyio.fail_after(20):
                while removed != {"ann", "bob"} or result != final:
                    event, data = await anext(got)
                    if event == "removed":
                        removed.add(data["key"])
                        del result[data["key"]]
                    else:
                        assert (event == "added") == (data["key"] not in result), (event, data)
                        result[data["key"]] = data["row"]
        bad = await http.get("/views/authors", params={"live": "1", "where": "latest is null"})
        assert bad.status_code == 400 and "'latest' is not declared" in bad.json()["error"]["message"]
