"""A key-value entity over the HTTP routes every entity has: commands, idempotency keys, state,
time travel, history and the view, with nothing of its own in the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.waiting import eventually

from .served import gateway

pytestmark = pytest.mark.anyio


async def test_a_cart_over_http(tmp_path: Path) -> None:
    async with gateway(tmp_path) as g, g.http() as http:
        body = {"sku": "apple", "quantity": 2}
        first = await http.post("/cart/h1/add_item", json=body, headers={"Idempotency-Key": "order-1"})
        again = await http.post("/cart/h1/add_item", json=body, headers={"Idempotency-Key": "order-1"})
        assert first.json() == {"ok": True, "result": {"items": {"apple": 2}, "checked_out": False}, "seq": 1}
        assert again.json()["result"] == first.json()["result"] and again.json()["seq"] == 1
        bad = await http.post("/cart/h1/add_item", json={"sku": "apple", "quantity": 0})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
        assert (await http.post("/cart/h1/checkout", json={})).json()["result"] == 2
        refused = await http.post("/cart/h1/add_item", json=body)
        assert refused.status_code == 422 and "checked out" in refused.json()["error"]["message"]
        await http.post("/cart/h1/clear", json={})

        assert (await http.get("/cart/h1")).json()["result"] == {"items": {}, "checked_out": False}
        at_2 = await http.get("/cart/h1", params={"seq": 2})
        assert at_2.json()["result"] == {"items": {"apple": 2}, "checked_out": True}
        history = (await http.get("/cart/h1/events")).json()["result"]
        assert [e["event"] for e in history] == ["memoir.StateSet", "memoir.StateSet", "memoir.StateDeleted"]

        await http.post("/cart/h2/add_item", json={"sku": "pear", "quantity": 3})

        async def view_has_h2() -> bool:
            r = await http.get("/views/cart_totals/h2")
            return r.status_code == 200 and r.json()["result"] == {"units": 3, "checked_out": False}

        await eventually(view_has_h2, what="the cart view over HTTP")
        assert (await http.get("/views/cart_totals/h1")).status_code == 404
