"""The HTTP half of the bad-input matrix: each row one request from outside, its status and code,
nothing stored, and the gateway still serving the next request.

One gateway serves the module (in-process, the token configured, bodies due within 1 s).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from .served import BEARER, TOKEN, Gated, gateway

pytestmark = pytest.mark.anyio

GOOD = b'{"units": 5, "on": "2022-03-01"}'
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
async def gated(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gated]:
    async with gateway(tmp_path_factory.mktemp("http-bad")) as g:
        async with g.http() as http:
            r = await http.post("/inventory/bad-1/open", json={"units": 3})
            assert r.status_code == 200, r.text
            r = await http.post("/inventory/bad-1/receive", content=GOOD, headers={**JSON, "Idempotency-Key": "k-1"})
            assert r.status_code == 200, r.text
        yield g


ROWS: list[tuple[str, str, str, dict[str, str], bytes, int, str, str]] = [
    # name, method, path, headers (the token unless Authorization is given), body, status, code, words
    (
        "text/plain",
        "POST",
        "/inventory/bad-1/receive",
        {"Content-Type": "text/plain"},
        GOOD,
        415,
        "unsupported_media_type",
        "'text/plain'",
    ),
    (
        "form",
        "POST",
        "/inventory/bad-1/receive",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"units=5",
        415,
        "unsupported_media_type",
        "application/x-www-form-urlencoded",
    ),
    (
        "no content type",
        "POST",
        "/inventory/bad-1/receive",
        {},
        GOOD,
        415,
        "unsupported_media_type",
        "application/json",
    ),
    (
        "JSON in latin-1",
        "POST",
        "/inventory/bad-1/receive",
        {"Content-Type": "application/json; charset=latin-1"},
        GOOD,
        415,
        "unsupported_media_type",
        "UTF-8",
    ),
    (
        "not a media type",
        "POST",
        "/inventory/bad-1/receive",
        {"Content-Type": "<script>alert(1)</script>"},
        GOOD,
        415,
        "unsupported_media_type",
        "not another Content-Type",
    ),
    (
        "cross-origin write",
        "POST",
        "/inventory/bad-1/receive",
        {"Origin": "http://evil.example", "Content-Type": "text/plain"},
        GOOD,
        403,
        "forbidden",
        "--http-cors-origin",
    ),
    (
        "cross-origin read",
        "GET",
        "/inventory/bad-1",
        {"Origin": "http://evil.example"},
        b"",
        403,
        "forbidden",
        "--http-cors-origin",
    ),
    (
        "cross-origin preflight",
        "OPTIONS",
        "/inventory/bad-1/receive",
        {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        b"",
        403,
        "forbidden",
        "refused",
    ),
    (
        "no credential",
        "POST",
        "/inventory/bad-1/receive",
        {"Authorization": "", **JSON},
        GOOD,
        401,
        "unauthorized",
        "Bearer <token>",
    ),
    (
        "no credential, read",
        "GET",
        "/inventory/bad-1/events",
        {"Authorization": ""},
        b"",
        401,
        "unauthorized",
        "Bearer",
    ),
    ("no credential, tail", "GET", "/events/inventory", {"Authorization": ""}, b"", 401, "unauthorized", "Bearer"),
    (
        "bad credential",
        "POST",
        "/inventory/bad-1/receive",
        {"Authorization": "Bearer " + "x" * 40, **JSON},
        GOOD,
        401,
        "unauthorized",
        "not this server's token",
    ),
    (
        "token as Basic",
        "GET",
        "/inventory/bad-1",
        {"Authorization": f"Basic {TOKEN}"},
        b"",
        401,
        "unauthorized",
        "not this server's token",
    ),
    ("control character in id", "POST", "/inventory/bad%01/receive", JSON, GOOD, 400, "invalid", "control characters"),
    ("format character in id", "GET", "/inventory/bad%E2%80%AE", {}, b"", 400, "invalid", "control characters"),
    ("id too long", "POST", "/inventory/" + "x" * 300 + "/receive", JSON, GOOD, 400, "invalid", "the limit is 256"),
    ("id not UTF-8", "GET", "/inventory/%ff%fe", {}, b"", 400, "invalid", "not UTF-8"),
    (
        "oversize body",
        "POST",
        "/inventory/bad-1/receive",
        JSON,
        b"[" + b" " * (1 << 20) + b"]",
        413,
        "too_large",
        "the limit is 1048576",
    ),
    (
        "argument out of range",
        "POST",
        "/inventory/bad-1/receive",
        JSON,
        b'{"units": 0, "on": "2022-03-01"}',
        400,
        "invalid",
        "$.units",
    ),
    (
        "key reused with another body",
        "POST",
        "/inventory/bad-1/receive",
        {**JSON, "Idempotency-Key": "k-1"},
        b'{"units": 6, "on": "2022-03-01"}',
        422,
        "key_reused",
        "another request",
    ),
    (
        "key reused for another command",
        "POST",
        "/inventory/bad-1/sell",
        {**JSON, "Idempotency-Key": "k-1"},
        GOOD,
        422,
        "key_reused",
        "another request",
    ),
    (
        "seq past the end",
        "GET",
        "/inventory/bad-1?seq=99",
        {},
        b"",
        404,
        "not_found",
        "has no event 99 (its last is 2)",
    ),
    ("negative after", "GET", "/events/inventory?after=-1", {"Last-Event-ID": "1"}, b"", 400, "invalid", "after"),
    ("not an integer", "GET", "/inventory/bad-1?seq=%D9%A5", {}, b"", 400, "invalid", "seq must be an integer"),
    ("method not allowed", "GET", "/inventory/bad-1/receive", {}, b"", 405, "method_not_allowed", "allowed: POST"),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "headers", "body", "status", "code", "words"), ROWS, ids=[r[0] for r in ROWS]
)
async def test_bad_http_input(
    gated: Gated,
    name: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
    words: str,
) -> None:
    before = await gated.last_position()
    sent = {**BEARER, **headers}
    if not sent["Authorization"]:
        del sent["Authorization"]
    async with gated.http(headers={}) as http:
        r = await http.request(method, path, content=body, headers=sent)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert words in r.json()["error"]["message"], r.text
        echoed = [v for k, v in sent.items() if k in ("Origin", "Authorization", "Idempotency-Key") and v in r.text]
        assert not echoed and "<script>" not in r.text, r.text  # replies never echo request headers
    await still_serving(gated, before)


async def test_a_half_sent_body_is_cut_after_the_body_timeout(gated: Gated) -> None:
    """A client that sends headers and part of the body is answered 408 and disconnected, not held."""
    before = await gated.last_position()
    host, port = gated.url.removeprefix("http://").split(":")
    head = (
        f"POST /inventory/bad-1/receive HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with anyio.fail_after(10):  # the gateway's body timeout is 1 s
        async with await anyio.connect_tcp(host, int(port)) as conn:
            await conn.send(head.encode() + GOOD[:10])
            answer = await read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"request_timeout"' in answer and b"within 1s" in answer
    await still_serving(gated, before)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /inventory/bad-1 HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing sent", "half-sent head"],
)
async def test_a_slow_head_is_cut_after_the_head_timeout(gated: Gated, sent: bytes) -> None:
    """A connection that sends no request, or half a head, is answered 408 and closed (no slowloris)."""
    host, port = gated.url.removeprefix("http://").split(":")
    with anyio.fail_after(10):  # the gateway's head timeout is 1 s
        async with await anyio.connect_tcp(host, int(port)) as conn:
            if sent:
                await conn.send(sent)
            answer = await read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code":"request_timeout"' in answer and b"head did not arrive within 1s" in answer
    await still_serving(gated, await gated.last_position())


async def read_until_closed(conn: anyio.abc.SocketStream) -> bytes:
    answer = b""
    try:
        while chunk := await conn.receive():
            answer += chunk
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass  # closed by the server: the point
    return answer


async def still_serving(gated: Gated, before: int) -> None:
    """Nothing was stored by the bad request, and a good one goes through."""
    assert await gated.last_position() == before
    async with gated.http() as http:
        r = await http.get("/inventory/bad-1")
        assert (r.status_code, r.json()["seq"]) == (200, 2), r.text
