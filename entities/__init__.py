"""Example entities, and the example apps: `app` (what `memoir run` hosts by default) and `sagas`.

`sagas` holds the timer and workflow examples (`memoir run entities:sagas`): a reservation that a
timer releases when unpaid, on the seed's inventory item, and a funds transfer between accounts.
"""

from runtime import App

from .bank import Account, Transfer
from .cart import Cart, CartTotals
from .inventory import InventoryItem
from .reservation import Reservation, ReservationStock
from .social import CountPosts, Post, PostsByAuthor, Profile

app = App(
    "examples",
    entities=[InventoryItem, Post, Profile, Cart],  # Cart: a key-value entity
    views=[PostsByAuthor, CartTotals],
    consumers=[CountPosts],
)

sagas = App("sagas", entities=[InventoryItem, Reservation, Account, Transfer], consumers=[ReservationStock])

__all__ = [
    "Account",
    "Cart",
    "CartTotals",
    "CountPosts",
    "InventoryItem",
    "Post",
    "PostsByAuthor",
    "Profile",
    "Reservation",
    "ReservationStock",
    "Transfer",
    "app",
    "sagas",
]
