"""A key-value entity through the `memoir` pytest fixtures, as a user's test project meets it.

The default app's `Cart` is served by `memoir_service`; `memoir_client` reaches it through the
NATS door (command ids, typed refusals), and `caught_up` waits for its view like any other.
"""

from __future__ import annotations

import pytest

STRICT = "filterwarnings = error\naddopts = -p no:cacheprovider --strict-config --strict-markers\n"

CART_TESTS = """
import pytest

from runtime import Rejected
from runtime.testing import caught_up

pytestmark = pytest.mark.asyncio


async def test_a_cart_over_nats_and_its_view(memoir_service, memoir_client):
    added = await memoir_client.send("cart", "c1", "add_item", {"sku": "apple", "quantity": 2}, command_id="a")
    again = await memoir_client.send("cart", "c1", "add_item", {"sku": "apple", "quantity": 2}, command_id="a")
    assert added.result == {"items": {"apple": 2}, "checked_out": False} and added.seq == 1
    assert again.duplicate and again.seq == 1
    assert (await memoir_client.send("cart", "c1", "checkout")).result == 2
    with pytest.raises(Rejected, match="checked out"):
        await memoir_client.send("cart", "c1", "add_item", {"sku": "pear", "quantity": 1})
    await memoir_client.send("cart", "c2", "add_item", {"sku": "pear", "quantity": 1})
    await memoir_client.send("cart", "c2", "clear")
    await caught_up(memoir_service)
    totals = memoir_service.view("cart_totals")
    assert (await totals.get("c1")).units == 2 and await totals.get("c2") is None


async def test_the_runtime_fixture_takes_a_cart_too(memoir_runtime):
    reply = await memoir_runtime.ask("cart", "c9", "add_item", {"sku": "fig", "quantity": 3})
    assert reply.result.items == {"fig": 3}
"""


def test_a_key_value_entity_under_the_fixtures(pytester: pytest.Pytester) -> None:
    ini = "[pytest]\nmemoir_app = entities:app\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    pytester.makefile(".ini", pytest=ini + STRICT)
    pytester.makepyfile(test_cart=CART_TESTS)
    pytester.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=2)
