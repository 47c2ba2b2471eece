"""`memoir run --http-port` as a real process, driven by a real HTTP client (httpx).

One process serves the whole module (starting one costs seconds); each test uses its own entity
ids; the client carries the data dir's token, as its owner's would. The last test stops it with
SIGTERM while a live tail is open. The gateway's finer points are tested in-process, in
tests/serve/service/http.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import nats
import pytest
from support.process import MEMOIR, ROOT, RunningRuntime

from entities import app
from runtime import Client, ConfigError, ErrorCode, SqliteJournal
from runtime.serve.process.datadir import MANIFEST
from runtime.serve.process.http_token import TOKEN_FILE, http_token, read_http_token
from runtime.serve.service.embedded_nats import free_port
from runtime.serve.service.http.status import status_of
from runtime.serve.service.specs.asyncapi import asyncapi

pytestmark = pytest.mark.anyio

GOOD = {"units": 5, "on": "2022-03-01"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Served:
    def __init__(self, rt: RunningRuntime, url: str) -> None:
        self.rt = rt
        self.url = url

    @property
    def bearer(self) -> dict[str, str]:
        """The header the data dir's owner sends: the token `memoir run` made there."""
        assert self.rt.http_auth, "memoir run made no http.token"
        return self.rt.http_auth


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    rt = RunningRuntime(tmp_path_factory.mktemp("http") / "data", "--http-port", str(port)).start()
    assert f"http http://127.0.0.1:{port}" in rt.banner
    yield Served(rt, f"http://127.0.0.1:{port}")
    if rt.proc is not None:
        rt.proc.kill()
        rt.proc.wait()
        rt.close()


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=10, headers=served.bearer) as client:
        yield client


async def open_item(http: httpx.AsyncClient, item: str, units: int = 100) -> None:
    r = await http.post(f"/inventory/{item}/open", json={"units": units})
    assert r.status_code == 200, r.text


async def test_a_command_with_an_idempotency_key_is_applied_once(http: httpx.AsyncClient, served: Served) -> None:
    await open_item(http, "idem-1")
    first = await http.post("/inventory/idem-1/receive", json=GOOD, headers={"Idempotency-Key": "order-17/line-2"})
    assert (first.status_code, first.json()) == (200, {"ok": True, "result": 105, "seq": 2})
    again = await http.post("/inventory/idem-1/receive", json=GOOD, headers={"Idempotency-Key": "order-17/line-2"})
    assert (again.status_code, again.json()) == (200, {"ok": True, "result": 105, "seq": 2, "duplicate": True})
    # one path: the same key over NATS is the same command id
    async with Client(served.rt.nats_url, auth=served.rt.auth) as client:
        reply = await client.send("inventory", "idem-1", "receive", GOOD, command_id="order-17/line-2")
    assert (reply.result, reply.seq, reply.duplicate) == (105, 2, True)
    history = (await http.get("/inventory/idem-1/events")).json()["result"]
    assert [(e["seq"], e["event"], e["command_id"]) for e in history] == [
        (1, "Opened", None),
        (2, "Received", "order-17/line-2"),
    ]


async def test_a_key_reused_for_another_request_is_422(http: httpx.AsyncClient) -> None:
    """Was: the first reply silently (and before that, found by schemathesis, a 500)."""
    first = await http.post("/profile/reuse-1/count_post", json={"post_id": "p"}, headers={"Idempotency-Key": "k"})
    assert first.json() == {"ok": True, "result": 1, "seq": 1}
    for path, body in [("count_post", {"post_id": "q"}), ("get", None)]:
        again = await http.post(f"/profile/reuse-1/{path}", json=body, headers={"Idempotency-Key": "k"})
        assert (again.status_code, again.json()["error"]["code"]) == (422, "key_reused"), again.text
    same = await http.post("/profile/reuse-1/count_post", json={"post_id": "p"}, headers={"Idempotency-Key": "k"})
    assert same.json() == {"ok": True, "result": 1, "seq": 1, "duplicate": True}


async def test_headers_reach_the_command_as_nats_headers_would(http: httpx.AsyncClient, served: Served) -> None:
    """The NATS door serves an HTTP command in-process, with the headers a NATS client's would carry:
    the command id and the trace id stored with its event, the data dir's token nowhere."""
    nc = await served.rt.connect()
    try:
        sub = await nc.subscribe("memoir.cmd.inventory.hdr-1.open")  # no NATS request is made for it
        await nc.flush()
        r = await http.post(
            "/inventory/hdr-1/open",
            json={"units": 1},
            headers={"Idempotency-Key": "key-1", "traceparent": TRACEPARENT},
        )
        assert r.status_code == 200, r.text
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.5)
    finally:
        await nc.close()
    async with SqliteJournal(served.rt.data / "journal.db") as journal:
        (opened,) = await journal.read("inventory", "hdr-1")
    assert (opened.command_id, opened.correlation_id) == ("key-1", TRACEPARENT.split("-")[1])
    assert opened.principal is None  # the data dir's token stays at the gateway: it names no one
    again = await http.post("/inventory/hdr-1/open", json={"units": 1}, headers={"Idempotency-Key": "key-1"})
    assert again.json() == {**r.json(), "duplicate": True}


async def test_a_streamed_body_over_the_limit_is_413(http: httpx.AsyncClient, served: Served) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):  # no Content-Length: the limit holds while reading
            yield b" " * 65536

    r = await http.post("/inventory/big-1/receive", content=chunks())
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large")
    async with SqliteJournal(served.rt.data / "journal.db") as journal:
        assert await journal.read("inventory", "big-1") == []


async def test_bearer_tokens_are_checked_on_http_as_on_nats(tmp_path: Path) -> None:
    """The transport's JWT check sees the Authorization header: a bad token is 401, nothing stored."""
    secret = tmp_path / "jwt.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    port = free_port()
    rt = RunningRuntime(tmp_path / "data", "--http-port", str(port), "--jwt-secret-file", str(secret)).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            bad = {"Authorization": "Bearer not.a.jwt"}
            r = await http.post("/inventory/jwt-1/open", json={"units": 1}, headers=bad)
            assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer"), r.text
            assert r.json()["error"]["code"] == "unauthorized"
            assert (await http.get("/inventory/jwt-1/events")).status_code == 401  # reads need a JWT too
        assert not (tmp_path / "data" / TOKEN_FILE).exists()  # with JWTs, no data dir token
        async with SqliteJournal(tmp_path / "data" / "journal.db") as journal:
            assert await journal.read("inventory", "jwt-1") == []
    finally:
        assert rt.stop() == 0


def test_the_token_file_is_owner_only_and_stable(tmp_path: Path) -> None:
    assert read_http_token(tmp_path) is None
    token = http_token(tmp_path)
    assert (tmp_path / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32 and http_token(tmp_path) == token == read_http_token(tmp_path)
    (tmp_path / TOKEN_FILE).chmod(0o644)  # loosened by hand: tightened again
    assert http_token(tmp_path) == token and (tmp_path / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / TOKEN_FILE).write_text("short\n")
    with pytest.raises(ConfigError, match="no usable token"):
        http_token(tmp_path)


async def test_the_data_dir_token_is_made_once_and_admits_only_its_holder(tmp_path: Path) -> None:
    """Secure by default: no flag, no JWT keys, and still nobody without the data dir's token gets in."""
    data, port = tmp_path / "data", free_port()
    rt = RunningRuntime(data, "--http-port", str(port)).start()
    try:
        token_file = data / TOKEN_FILE
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = read_http_token(data)
        assert token is not None and len(token) >= 32
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for headers in ({}, {"Authorization": "Bearer guess"}):
                r = await http.post("/inventory/tok-1/open", json={"units": 1}, headers=headers)
                assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), r.text
                assert (await http.get("/inventory/tok-1", headers=headers)).status_code == 401
            ok = await http.post(
                "/inventory/tok-1/open", json={"units": 1}, headers={"Authorization": f"Bearer {token}"}
            )
            assert ok.status_code == 200, ok.text
        assert token not in (data / MANIFEST).read_text()  # never at rest in the manifest
    finally:
        assert rt.stop() == 0
    rt = RunningRuntime(data, "--http-port", str(port)).start()  # kept across restarts
    try:
        assert read_http_token(data) == token
    finally:
        assert rt.stop() == 0


async def test_insecure_and_cors_origins_are_explicit_flags(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    page = "https://shop.example"
    flags = ("--http-port", str(port), "--http-insecure", "--http-cors-origin", page)
    rt = RunningRuntime(data, *flags).start()
    try:
        assert not (data / TOKEN_FILE).exists()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            r = await http.post("/inventory/open-1/open", json={"units": 1}, headers={"Origin": page})
            assert (r.status_code, r.headers["access-control-allow-origin"]) == (200, page), r.text
            r = await http.post("/inventory/open-2/open", json={"units": 1}, headers={"Origin": "http://evil.example"})
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    finally:
        assert rt.stop() == 0
    log = (tmp_path / "data.log").read_text()
    assert "--http-insecure" in log and "every local user" in log


def test_a_taken_http_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*MEMOIR, "run", "--data-dir", str(tmp_path / "data"), "--http-port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"memoir: config: cannot serve HTTP on 127.0.0.1:{port}: Address already in use"


def test_every_protocol_code_has_its_own_status() -> None:
    """A code added to the protocol without a status here would reach HTTP clients as a 500."""
    for code in ErrorCode:
        assert (status_of(code) == 500) == (code == ErrorCode.INTERNAL), code
    assert status_of("unauthorized") == 401 and status_of("forbidden") == 403


async def test_error_codes_map_to_statuses(http: httpx.AsyncClient) -> None:
    await open_item(http, "codes-1", units=3)
    cases: list[tuple[str, str, Any, int, str, str]] = [
        ("inventory/codes-1/open", "POST", {"units": 1}, 422, "rejected", "already open"),
        ("inventory/codes-1/sell", "POST", {"units": 9, "on": "2022-03-01"}, 422, "rejected", "3 in stock"),
        ("inventory/codes-1/receive", "POST", {"units": "x", "on": "2022-03-01"}, 400, "invalid", "$.units"),
        ("inventory/codes-1/explode", "POST", {}, 404, "unknown_command", "known: adjust, get"),
        ("warehouse/codes-1/open", "POST", {}, 404, "unknown_entity_type", "no entity type 'warehouse'"),
        ("inventory/codes-1", "DELETE", None, 405, "method_not_allowed", "allowed: GET"),
        ("inventory/codes-1/sell", "GET", None, 405, "method_not_allowed", "allowed: POST"),
        ("nowhere", "GET", None, 404, "not_found", "no route"),
    ]
    for path, method, body, status, code, words in cases:
        r = await http.request(method, f"/{path}", json=body)
        assert r.status_code == status, (path, r.text)
        error = r.json()["error"]
        assert (r.json()["ok"], error["code"]) == (False, code)
        assert words in error["message"], error["message"]
    assert (await http.get("/inventory/codes-1")).json()["result"]["units"] == 3


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status", "words"),
    [
        ("malformed json", "/inventory/bad-1/receive", b'{"units": ', {}, 400, "not valid JSON"),
        ("not an object", "/inventory/bad-1/receive", b"[5]", {}, 400, "Expected `object`"),
        ("extra field", "/inventory/bad-1/receive", b'{"units": 5, "on": "2022-03-01", "x": 1}', {}, 400, "`x`"),
        ("control char id", "/inventory/bad%01/receive", b"{}", {}, 400, "control characters"),
        ("id too long", "/inventory/" + "x" * 300 + "/receive", b"{}", {}, 400, "the limit is 256"),
        ("id not utf-8", "/inventory/%ff%fe/receive", b"{}", {}, 400, "not UTF-8"),
        ("too large", "/inventory/bad-1/receive", b"[" + b" " * (1 << 20) + b"]", {}, 413, "the limit is 1048576"),
        ("bad key", "/inventory/bad-1/receive", b"{}", {"Idempotency-Key": "x" * 300}, 400, "Idempotency-Key"),
        ("bad timeout", "/inventory/bad-1/receive", b"{}", {"Memoir-Timeout-Ms": "soon"}, 400, "Memoir-Timeout-Ms"),
    ],
)
async def test_bad_input_is_named_and_stores_nothing(
    http: httpx.AsyncClient,
    served: Served,
    name: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    r = await http.post(path, content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    # the process keeps serving, and nothing was stored
    ok = await http.post("/inventory/bad-ok/receive", json=GOOD)
    assert ok.status_code == 200
    async with SqliteJournal(served.rt.data / "journal.db") as journal:
        for entity_id in ("bad-1", "bad\x01", "x" * 300):
            assert await journal.read("inventory", entity_id) == []


async def test_state_history_and_time_travel(http: httpx.AsyncClient) -> None:
    item = "a/b.c d%"  # every awkward character, percent-encoded in the path
    path = "/inventory/a%2Fb.c%20d%25"
    assert (await http.post(f"{path}/open", json={"units": 10})).status_code == 200
    before = dt.datetime.now(dt.UTC)
    await anyio.sleep(0.01)
    assert (await http.post(f"{path}/receive", json=GOOD)).json()["result"] == 15
    now = (await http.get(path)).json()
    assert (now["result"]["units"], now["seq"]) == (15, 2)
    assert (await http.get(path, params={"seq": 1})).json()["result"]["units"] == 10
    assert (await http.get(path, params={"at": before.isoformat()})).json()["seq"] == 1
    events = (await http.get(f"{path}/events", params={"from_seq": 2, "limit": 5})).json()["result"]
    assert [(e["entity_id"], e["seq"], e["payload"]) for e in events] == [(item, 2, GOOD)]
    for params, words in [({"seq": "two"}, "seq must be an integer"), ({"at": "2022-03-01"}, "no timezone")]:
        r = await http.get(path, params=params)
        assert (r.status_code, words in r.json()["error"]["message"]) == (400, True), r.text


async def test_views_get_and_scan(http: httpx.AsyncClient) -> None:
    r = await http.post("/post/p-1/publish", json={"author": "ann", "text": "hi"})
    assert r.status_code == 200, r.text
    with anyio.fail_after(10):
        while (row := await http.get("/views/posts_by_author/ann")).status_code == 404:
            await anyio.sleep(0.05)  # the view follows the stream
    assert row.json()["result"]["posts"] == 1
    rows = (await http.get("/views/posts_by_author", params={"limit": 10})).json()["result"]
    assert ["ann", row.json()["result"]] in rows
    assert (await http.get("/views/posts_by_author/nobody")).json()["error"]["code"] == "not_found"
    assert (await http.get("/views/nope/x")).status_code == 404
    assert (await http.get("/views/posts_by_author", params={"limit": 0})).status_code == 400


async def sse_events(response: httpx.Response, count: int) -> list[dict[str, str]]:
    """The next `count` events of a live tail (comments skipped)."""
    events: list[dict[str, str]] = []
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if frame:
                events.append(frame)
                frame = {}
                if len(events) == count:
                    return events
            continue
        if not line.startswith(":"):
            field, _, value = line.partition(": ")
            frame[field] = value
    return events


async def test_live_tail_as_server_sent_events(http: httpx.AsyncClient) -> None:
    with anyio.fail_after(20):
        async with http.stream("GET", "/events/inventory") as tail:  # new events only
            assert tail.headers["content-type"] == "text/event-stream"
            await open_item(http, "tail-1")
            await http.post("/inventory/tail-1/receive", json=GOOD)
            first, second = await sse_events(tail, 2)
        assert first["event"] == "Opened" and second["event"] == "Received"
        assert json.loads(second["data"])["payload"] == GOOD
        assert int(second["id"]) > int(first["id"])
        await http.post("/inventory/tail-1/sell", json=GOOD)
        # resume after the first: the next one is the second, then the sale
        async with http.stream("GET", "/events/inventory", headers={"Last-Event-ID": first["id"]}) as tail:
            resumed = await sse_events(tail, 2)
    assert [(e["id"], e["event"]) for e in resumed] == [(second["id"], "Received"), (resumed[1]["id"], "Sold")]
    r = await http.get("/events/inventory", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 400


async def test_real_messages_match_the_asyncapi_schemas(http: httpx.AsyncClient, served: Served) -> None:
    doc = json.loads(json.dumps(asyncapi(app)))
    messages = doc["components"]["messages"]

    def valid(schema: dict[str, Any], value: Any) -> None:
        root = {**schema, "components": {"schemas": doc["components"]["schemas"]}}
        jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(value)

    payload = {"units": 7, "last_in": "2022-03-01", "last_out": None}
    nc = await served.rt.connect()
    try:
        reply = await nc.request("memoir.cmd.inventory.schema-1.open", json.dumps(payload).encode(), timeout=5)
        valid(messages["inventory.open"]["payload"], payload)
        valid(messages["inventory.open.reply"]["payload"], json.loads(reply.data))
        refused = await nc.request("memoir.cmd.inventory.schema-1.open", json.dumps(payload).encode(), timeout=5)
        valid(messages["error"]["payload"], json.loads(refused.data))
        with anyio.fail_after(10):
            while True:  # the outbox publishes shortly after the append
                try:
                    event = await nc.jetstream().get_last_msg(
                        "MEMOIR_EVENTS_INVENTORY", "memoir.events.inventory.schema-1"
                    )
                    break
                except nats.js.errors.NotFoundError:
                    await anyio.sleep(0.05)
    finally:
        await nc.close()
    valid(messages["inventory.Opened"]["payload"], json.loads(event.data))
    valid(messages["inventory.Opened"]["headers"], dict(event.headers or {}))
    with pytest.raises(jsonschema.ValidationError):
        valid(messages["inventory.Received"]["headers"], dict(event.headers or {}))  # the name is fixed per message


async def test_sigterm_ends_open_tails_and_exits_cleanly(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=10, headers=served.bearer) as client:
        with anyio.fail_after(20):
            async with client.stream("GET", "/events/inventory") as tail:
                assert tail.status_code == 200
                assert served.rt.proc is not None
                served.rt.proc.send_signal(signal.SIGTERM)
                async for _ in tail.aiter_lines():
                    pass  # the server ends the stream
            assert await anyio.to_thread.run_sync(served.rt.proc.wait, 20) == 0
