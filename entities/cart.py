"""A shopping cart as a key-value entity, and a view of the carts' totals.

A cart's whole state is stored on every change (`self.update(...)`): there are no
events to design, and its history is the list of states. `CartTotals` follows the
cart stream like any view follows an event-sourced one, handling the two state
events every key-value entity publishes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from runtime import Effect, Envelope, KeyValueEntity, Rows, StateDeleted, StateSet, View, command, on

# Whitespace spelled out (all Python's `\s` and all ECMA-262's): `\S` differs between them (\x1c-\x1f,
# \x85, \ufeff), and the schema's reader is not Python. `(?!\n)`: Python's `$` also matches before a last \n.
BLANK = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
Sku = Annotated[str, msgspec.Meta(pattern=f"^[^{BLANK}]{{1,64}}$(?!\\n)", description="an item's stock-keeping unit")]
Quantity = Annotated[int, msgspec.Meta(gt=0, le=1000)]


class CartState(msgspec.Struct, frozen=True):
    items: dict[str, int] = {}  # sku -> quantity
    checked_out: bool = False


class Cart(KeyValueEntity[CartState], name="cart"):
    initial = CartState()

    @command
    def add_item(self, cart: CartState, sku: Sku, quantity: Quantity) -> Effect[CartState]:
        if cart.checked_out:
            return self.error(f"cart {self.entity_id} is checked out")
        items = {**cart.items, sku: cart.items.get(sku, 0) + quantity}
        return self.update(CartState(items)).reply(lambda s: s)

    @command
    def remove_item(self, cart: CartState, sku: Sku) -> Effect[CartState]:
        if cart.checked_out:
            return self.error(f"cart {self.entity_id} is checked out")
        if sku not in cart.items:
            return self.error(f"cart {self.entity_id} holds no {sku}")
        return self.update(CartState({k: q for k, q in cart.items.items() if k != sku})).reply(lambda s: s)

    @command
    def checkout(self, cart: CartState) -> Effect[int]:
        if not cart.items:
            return self.error(f"cart {self.entity_id} is empty")
        if cart.checked_out:
            return self.error(f"cart {self.entity_id} is already checked out")
        return self.update(CartState(cart.items, checked_out=True)).reply(sum(cart.items.values()))

    @command
    def clear(self, cart: CartState) -> Effect[None]:
        """Delete the cart's state: it is empty again, and takes new items."""
        return self.delete()

    @command
    def get(self, cart: CartState) -> Effect[CartState]:
        return self.reply(cart)


class CartTotal(msgspec.Struct):
    units: int = 0
    checked_out: bool = False


class CartTotals(View[CartTotal], name="cart_totals", sources=[Cart]):
    """Units in each cart, keyed by cart id; a cleared cart's row goes."""

    @on
    def set(self, rows: Rows[CartTotal], e: StateSet[CartState], env: Envelope) -> None:
        rows.put(env.entity_id, CartTotal(sum(e.state.items.values()), e.state.checked_out))

    @on
    def deleted(self, rows: Rows[CartTotal], e: StateDeleted, env: Envelope) -> None:
        rows.delete(env.entity_id)
