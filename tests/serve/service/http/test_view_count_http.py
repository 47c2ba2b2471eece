"""`GET /views/{view}?count=true&where=…`: how many rows of a view pass a where, over HTTP, the same
answer the NATS door's `count` gives; the OpenAPI document types the parameter and the answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

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
TOKEN = "c" * 40


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", "author"]):
    """The example's view, counted by author and by its count of posts."""


APP = App("vch", entities=[Post, Profile], views=[Authors, PostsByAuthor])


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


async def test_count_a_view_over_http(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, svc):
        for i, author in enumerate(["ann", "bob", "ann", "cy", "bob", "ann", "dee"]):
            await svc.runtime.ask("post", f"p{i}", "publish", {"author": author, "text": "x"})
        await eventually(lambda: svc.views["authors"].applied == 7, what="the posts applied")
        await eventually(lambda: svc.views["posts_by_author"].applied == 7, what="the plain view too")

        async def count(view: str, **params: str) -> int:
            response = await http.get(f"/views/{view}", params={"count": "true", **params})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["ok"] is True and isinstance(body["result"], int)
            return int(body["result"])

        assert await count("authors") == 4  # every row
        assert await count("authors", where="posts >= 2") == 2
        assert await count("authors", where='posts = 1 or author = "ann"') == 3
        assert await count("authors", where='author prefix "zz"') == 0
        # order_by, page and limit do not change a count
        assert await count("authors", where="posts >= 1", order_by="posts desc", limit="1") == 4
        assert await count("posts_by_author") == 4  # a view with no declared fields counts all its rows
        # the same number the Python door gives
        assert await svc.view("authors").count("posts >= 2") == 2

        off = await http.get("/views/authors", params={"count": "false", "where": "posts >= 2"})
        assert off.status_code == 200 and len(off.json()["result"]["rows"]) == 2  # count=false: the rows

        for params, message in [
            ({"count": "yes"}, "count must be true or false"),
            ({"count": "true", "where": 'latest = "p1"'}, "'latest' is not declared for queries"),
            ({"count": "true", "where": "posts >>= 2"}, "where: "),
            ({"count": "1", "where": 'posts = "2"'}, "holds number values"),
        ]:
            bad = await http.get("/views/authors", params=params)
            assert bad.status_code == 400, (params, bad.text)
            assert bad.json()["error"]["code"] == "invalid" and message in bad.json()["error"]["message"]
        unknown = await http.get("/views/nope", params={"count": "true"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_view"


def test_openapi_types_count() -> None:
    doc = openapi(APP)
    op = doc["paths"]["/views/authors"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["count"]["schema"] == {"type": "boolean"} and params["count"]["in"] == "query"
    answers = op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"]["anyOf"]
    assert {"type": "integer", "minimum": 0} in [{k: a.get(k) for k in ("type", "minimum")} for a in answers]
    plain = {p["name"] for p in doc["paths"]["/views/posts_by_author"]["get"]["parameters"]}
    assert "count" not in plain  # typed where the view declares query fields, as where and order_by are
