"""Example entities, and the example app that `memoir run` hosts by default."""

from runtime import App

from .inventory import InventoryItem

app = App("examples", entities=[InventoryItem])

__all__ = ["InventoryItem", "app"]
