"""Routes that no id can collide with, Allow headers that say what a path answers, and time travel."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from .served import gateway

pytestmark = pytest.mark.anyio


async def test_an_entity_may_be_called_events(tmp_path: Path) -> None:
    async with gateway(tmp_path) as g, g.http() as http:
        r = await http.post("/profile/events/count_post", json={"post_id": "p"})
        assert r.json() == {"ok": True, "result": 1, "seq": 1}
        state = await http.get("/profile/events")
        assert (state.headers["content-type"], state.json()["result"]["posts"]) == ("application/json", 1)
        history = (await http.get("/profile/events/events")).json()["result"]
        assert [(e["entity_id"], e["event"]) for e in history] == [("events", "PostCounted")]
        with anyio.fail_after(10):
            async with http.stream("GET", "/events/profile", params={"after": 0}) as tail:
                assert tail.headers["content-type"] == "text/event-stream"
                async for line in tail.aiter_lines():
                    if line.startswith("event: "):
                        assert line == "event: PostCounted"
                        break


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/inventory/0/adjust", "POST"),
        ("OPTIONS", "/inventory/0/adjust", "POST"),
        ("DELETE", "/inventory/0", "GET"),
        ("POST", "/inventory/0/events", "GET"),
        ("PUT", "/events/inventory", "GET"),
        ("POST", "/views/posts_by_author", "GET"),
    ],
)
async def test_allow_names_exactly_what_the_path_answers(tmp_path: Path, method: str, path: str, allow: str) -> None:
    async with gateway(tmp_path) as g, g.http() as http:
        r = await http.request(method, path, json={} if method == "POST" else None)
        assert (r.status_code, r.headers["allow"], r.json()["error"]["code"]) == (405, allow, "method_not_allowed")
        for other in allow.split(", "):  # and what it allows is not a 404 or 405
            if other == "GET" and not path.startswith("/events/"):
                assert (await http.get(path)).status_code not in (404, 405)


async def test_seq_and_at_together_take_the_earlier(tmp_path: Path) -> None:
    async with gateway(tmp_path) as g, g.http() as http:
        await http.post("/inventory/tt-1/open", json={"units": 1})
        between = dt.datetime.now(dt.UTC)
        with anyio.fail_after(5):
            while dt.datetime.now(dt.UTC) <= between:  # recorded times are later than `between`
                await anyio.sleep(0.001)
        await http.post("/inventory/tt-1/receive", json={"units": 2, "on": "2022-03-01"})
        both = await http.get("/inventory/tt-1", params={"seq": 2, "at": between.isoformat()})
        assert (both.status_code, both.json()["seq"]) == (200, 1), both.text
        assert (await http.get("/inventory/tt-1", params={"seq": 2})).json()["result"]["units"] == 3
        assert (await http.get("/inventory/tt-1", params={"seq": 3})).status_code == 404
        assert (await http.get("/inventory/nobody", params={"seq": 0})).json() == {
            "ok": True,
            "result": {"units": 0, "last_in": None, "last_out": None, "opened": False},
            "seq": 0,
        }


async def test_live_tail_frames_match_the_documented_schema(tmp_path: Path) -> None:
    """The SSE stream as a parser reads it (a list of id/event/data), each data an event record."""
    async with gateway(tmp_path) as g, g.http() as http:
        await http.post("/inventory/sse-1/open", json={"units": 1})
        await http.post("/inventory/sse-1/receive", json={"units": 2, "on": "2022-03-01"})
        doc = (await http.get("/openapi.json")).json()
        frames: list[dict[str, str]] = []
        with anyio.fail_after(10):
            async with http.stream("GET", "/events/inventory", params={"after": 0}) as tail:
                frame: dict[str, str] = {}
                async for line in tail.aiter_lines():
                    if line and not line.startswith(":"):
                        field, _, value = line.partition(": ")
                        frame[field] = value
                    elif not line and frame:
                        frames.append(frame)
                        frame = {}
                        if len(frames) == 2:
                            break
    op = doc["paths"]["/events/inventory"]["get"]
    schema = op["responses"]["200"]["content"]["text/event-stream"]["schema"]

    def valid(sub: dict[str, Any], value: Any) -> None:
        root = {**sub, "components": doc["components"]}
        jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(value)

    valid(schema, frames)
    for f in frames:  # contentSchema is an annotation to validators: checked here
        valid(schema["items"]["properties"]["data"]["contentSchema"], json.loads(f["data"]))
    assert [f["event"] for f in frames] == ["Opened", "Received"]
