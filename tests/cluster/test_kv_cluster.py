"""Key-value entities in a three-member cluster: the default app (`entities:app`, with `Cart`) as
three `memoir run --cluster` processes on one PostgreSQL journal and view store.

Commands reach each cart's owner whichever member they enter by, a repeated command id is
answered once across members, `CartTotals` (a singleton) follows the carts of
every member, and a stopped member's carts come back elsewhere with their last state.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.deployment import KINDS, Deployment, deployed
from support.waiting import eventually

from runtime import Client

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

CARTS = [f"cart-{i}" for i in range(12)]


@pytest.fixture(scope="module")
async def members(nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    tmp = Path(tmp_path_factory.mktemp("kv_members"))
    async with deployed(KINDS[1], nats_cluster.urls, tmp, app="entities:app") as d:
        yield d


async def test_carts_on_every_member_their_view_and_one_answer_per_id(
    members: Deployment, nats_cluster: NatsCluster
) -> None:
    d = members
    for cart in CARTS:
        await d.send("cart", cart, "add_item", {"sku": "apple", "quantity": 2})
        await d.send("cart", cart, "add_item", {"sku": "pear", "quantity": 1})
    ownership = await d.ownership()
    owners = {ownership.owner("cart", c) for c in CARTS}
    assert len(owners) >= 2, f"the carts should spread over the members, all went to {owners}"
    assert await d.send("cart", "cart-0", "checkout") == 3
    await d.send("cart", "cart-1", "clear")
    assert await d.send("cart", "cart-1", "get") == {"items": {}, "checked_out": False}

    # The same command id through two NATS nodes (two members' doors): stored once, the first answer twice.
    body = {"sku": "fig", "quantity": 5}
    async with Client(nats_cluster.urls[0], prefix=d.prefix) as c0, Client(nats_cluster.urls[1], prefix=d.prefix) as c1:
        first = await c0.send("cart", "cart-2", "add_item", body, command_id="kv-fig", timeout=30)
        again = await c1.send("cart", "cart-2", "add_item", body, command_id="kv-fig", timeout=30)
    assert again.duplicate and not first.duplicate and again.seq == first.seq and again.result == first.result
    assert (await d.send("cart", "cart-2", "get"))["items"] == {"apple": 2, "pear": 1, "fig": 5}

    async def view_caught_up() -> bool:
        rows = {c: await d.view_get("cart_totals", c) for c in ("cart-0", "cart-1", "cart-2", "cart-11")}
        return rows == {
            "cart-0": {"units": 3, "checked_out": True},
            "cart-1": None,
            "cart-2": {"units": 8, "checked_out": False},
            "cart-11": {"units": 3, "checked_out": False},
        }

    await eventually(view_caught_up, 60, "the cart view to follow the carts of every member")


async def test_a_stopped_members_carts_come_back_elsewhere_with_their_last_state(members: Deployment) -> None:
    d = members
    ownership = await d.ownership()
    gone = d.member_id(ownership, 0)
    moved = [c for c in CARTS if ownership.owner("cart", c) == gone]
    if not moved:  # shard placement is the cluster's choice: give member 0 a cart of its own
        extra = next(f"cart-m0-{n}" for n in range(10_000) if ownership.owner("cart", f"cart-m0-{n}") == gone)
        await d.send("cart", extra, "add_item", {"sku": "plum", "quantity": 2})
        moved = [extra]
    before = {c: await d.send("cart", c, "get") for c in moved}
    assert d.processes[0].signal(signal.SIGTERM) == 0, "a member stopped with SIGTERM exits 0"
    for cart in moved:  # recovered by the new owner from the shared journal, then changed there
        assert await d.send("cart", cart, "get", within=90) == before[cart]
        if before[cart]["checked_out"]:  # a checked-out cart takes no items: clearing it is its change
            await d.send("cart", cart, "clear")
            assert await d.send("cart", cart, "get") == {"items": {}, "checked_out": False}
        else:
            after = await d.send("cart", cart, "add_item", {"sku": "kiwi", "quantity": 1})
            assert after["items"] == {**before[cart]["items"], "kiwi": 1}
    now = await d.ownership()
    assert all(now.owner("cart", c) != gone for c in moved)
