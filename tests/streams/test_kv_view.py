"""A view and a consumer over a key-value entity, through the real service: the outbox, JetStream.

Each state change is published to the cart stream like any event, `CartTotals` follows it (a
cleared cart's row goes), and a consumer turns each checkout into a command to another entity,
exactly once across a restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.views import drop_view_schema, open_view_store_for_test
from support.waiting import eventually

from entities.cart import Cart, CartState, CartTotal, CartTotals
from entities.social import Profile
from runtime import App, Consumer, Context, SqliteJournal, StateSet, on
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats

pytestmark = pytest.mark.anyio


class CountCheckouts(Consumer, name="count_checkouts", sources=[Cart]):
    """Each checked-out cart counted once on the profile named by the cart id's prefix."""

    @on
    async def changed(self, ctx: Context, e: StateSet[CartState]) -> None:
        if e.state.checked_out:
            owner = ctx.envelope.entity_id.split("-")[0]
            await ctx.send("profile", owner, "count_post", {"post_id": ctx.envelope.entity_id})


APP = App("kv", entities=[Cart, Profile], views=[CartTotals], consumers=[CountCheckouts])


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_view_and_a_consumer_follow_a_key_value_entity(
    kind: str, tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, open_view_store_for_test(kind, tmp_path) as store:
        try:
            async with Service(APP, journal, nats_url=nats_server.url, view_store=store, prefix="kv") as svc:
                ask = svc.runtime.ask
                for cart in ("ann-1", "ann-2", "bob-1"):
                    await ask("cart", cart, "add_item", {"sku": "apple", "quantity": 2}, command_id=f"{cart}-a")
                    await ask("cart", cart, "add_item", {"sku": "pear", "quantity": 1}, command_id=f"{cart}-p")
                assert (await ask("cart", "ann-1", "checkout", command_id="ann-1-out")).result == 3
                await ask("cart", "ann-2", "checkout", command_id="ann-2-out")
                await ask("cart", "bob-1", "clear", command_id="bob-1-clear")

                async def caught_up() -> bool:
                    rows = await svc.view("cart_totals").all()
                    return rows == {"ann-1": CartTotal(3, True), "ann-2": CartTotal(3, True)}

                await eventually(caught_up, what="the cart view to show two checked-out carts and no cleared one")

                async def counted() -> bool:
                    return (await svc.runtime.ask("profile", "ann", "get")).result.posts == 2

                await eventually(counted, what="the consumer to count ann's two checkouts")
                await svc.views["cart_totals"].rebuild()  # the same rows from the stored states
            async with Service(APP, journal, nats_url=nats_server.url, view_store=store, prefix="kv") as svc:
                await eventually(caught_up, what="the rebuilt view")
                await svc.runtime.ask("cart", "bob-1", "add_item", {"sku": "fig", "quantity": 4})

                async def bob_back() -> bool:
                    return await svc.view("cart_totals").get("bob-1") == CartTotal(4)

                await eventually(bob_back, what="a cleared cart used again to come back in the view")
                assert (await svc.runtime.ask("profile", "ann", "get")).result.posts == 2, "counted once"
        finally:
            if kind == "postgres":
                await drop_view_schema(tmp_path)
