"""Who may call the HTTP API: the data dir's token, JWTs, an explicit insecure mode, configured origins."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.served import serve

from entities import app
from runtime import ConfigError, VerificationKey, Verifier
from runtime.serve.service import HttpGateway
from runtime.serve.service.auth import StaticToken
from runtime.serve.service.http.guard import Access

from ..auth.mint import SECRET, claims, hs256
from .served import BEARER, TOKEN, gateway

pytestmark = pytest.mark.anyio

PAGE = "https://shop.example"


async def test_the_token_admits_and_nothing_else_does(tmp_path: Path) -> None:
    async with gateway(tmp_path) as g, g.http() as http, g.http(headers={}) as stranger:
        assert (await http.post("/inventory/tok-1/open", json={"units": 1})).status_code == 200
        for r in (await stranger.get("/inventory/tok-1"), await stranger.post("/inventory/tok-2/open", json={})):
            assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer"), r.text
        assert (await stranger.get("/openapi.json")).json()["security"] == [{"bearer": []}]  # public, and says so
        assert (await http.get("/inventory/tok-1")).json()["result"]["units"] == 1


async def test_the_token_stays_at_the_gateway(tmp_path: Path) -> None:
    """Without JWTs the NATS command carries no Authorization: the token is not spread over NATS."""
    async with gateway(tmp_path) as g, g.http() as http:
        nc = g.served.svc.nc
        assert nc is not None
        sub = await nc.subscribe("memoir.cmd.inventory.tok-3.open")
        await nc.flush()
        assert (await http.post("/inventory/tok-3/open", json={"units": 1})).status_code == 200
        msg = await sub.next_msg(timeout=5)
    assert msg.headers is not None and "Authorization" not in msg.headers


def test_a_gateway_needs_an_explicit_choice() -> None:
    with pytest.raises(ConfigError, match="a token, JWT keys, or insecure=True"):
        Access()
    with pytest.raises(ConfigError, match="at least 32"):
        StaticToken("short")
    assert StaticToken(TOKEN).verify(BEARER["Authorization"]).subject is None


async def test_without_a_choice_the_gateway_does_not_start(tmp_path: Path) -> None:
    async with serve(app, tmp_path, None) as served:
        with pytest.raises(ConfigError, match="insecure=True"):
            HttpGateway(served.svc)


async def test_insecure_is_open_and_says_so(tmp_path: Path) -> None:
    async with gateway(tmp_path, insecure=True) as g, g.http(headers={}) as http:
        assert (await http.post("/inventory/open-1/open", json={"units": 1})).status_code == 200
        assert "security" not in (await http.get("/openapi.json")).json()
        assert (await http.get("/inventory/open-1", headers={"Origin": PAGE})).status_code == 403  # still no pages


async def test_with_jwts_every_route_needs_a_verified_token(tmp_path: Path) -> None:
    verifier = Verifier([VerificationKey.hmac(SECRET)])
    async with gateway(tmp_path, verifier=verifier) as g, g.http(headers={}) as http:
        good = {"Authorization": f"Bearer {hs256(claims('ann'))}"}
        r = await http.post("/inventory/jwt-1/open", json={"units": 2}, headers=good)
        assert r.status_code == 200, r.text
        assert (await http.get("/inventory/jwt-1", headers=good)).json()["result"]["units"] == 2
        history = (await http.get("/inventory/jwt-1/events", headers=good)).json()["result"]
        assert history[0]["principal"] == "ann"  # the JWT went on to the NATS door
        for headers in ({}, BEARER, {"Authorization": "Bearer not.a.jwt"}):
            r = await http.get("/inventory/jwt-1", headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), r.text


async def test_configured_origins_get_cors_answers(tmp_path: Path) -> None:
    async with gateway(tmp_path, origins=[PAGE]) as g, g.http() as http:
        preflight = await http.options(
            "/inventory/cors-1/open",
            headers={
                "Origin": PAGE,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == PAGE
        assert "POST" in preflight.headers["access-control-allow-methods"]
        r = await http.post("/inventory/cors-1/open", json={"units": 1}, headers={"Origin": PAGE})
        assert (r.status_code, r.headers["access-control-allow-origin"]) == (200, PAGE)
        other = await http.post(
            "/inventory/cors-2/open", json={"units": 1}, headers={"Origin": "https://other.example"}
        )
        assert (other.status_code, other.json()["error"]["code"]) == (403, "forbidden")
        assert (await http.get("/inventory/cors-2")).json()["seq"] == 0
