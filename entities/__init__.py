"""Example entities, and the example app that `memoir run` hosts by default."""

from runtime import App

from .inventory import InventoryItem
from .social import CountPosts, Post, PostsByAuthor, Profile

app = App("examples", entities=[InventoryItem, Post, Profile], views=[PostsByAuthor], consumers=[CountPosts])

__all__ = ["CountPosts", "InventoryItem", "Post", "PostsByAuthor", "Profile", "app"]
