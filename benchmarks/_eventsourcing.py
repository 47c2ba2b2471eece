"""The peer library: the same inventory item and commands on `eventsourcing` with its SQLite persistence."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


class Item(Aggregate):
    @event("Opened")
    def __init__(self, sku: str) -> None:
        self.sku = sku
        self.units = 0

    @event("Received")
    def receive(self, units: int, on: str) -> None:
        self.units += units


class Shop(Application[UUID]):
    def open(self, sku: str) -> UUID:
        item = Item(sku)
        self.save(item)
        return item.id

    def receive(self, item_id: UUID, units: int, on: str) -> int:
        item: Item = self.repository.get(item_id)
        item.receive(units, on)
        self.save(item)
        return item.units


def shop(path: Path, *, cache: int = 0, snapshots: bool = False) -> Shop:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    if cache:
        env["AGGREGATE_CACHE_MAXSIZE"] = str(cache)
    if snapshots:
        env["IS_SNAPSHOTTING_ENABLED"] = "y"
    return Shop(env=env)


def commands_per_s(path: Path, commands: int, entities: int, seed: int = 7) -> float:
    """`commands` receives to random items among `entities`, one after another (the library is sync)."""
    import random

    app = shop(path, cache=entities)
    ids = [app.open(f"SKU-{i}") for i in range(entities)]
    rnd = random.Random(seed)
    started = time.perf_counter()
    for _ in range(commands):
        app.receive(ids[rnd.randrange(entities)], 1, "2022-03-01")
    return commands / (time.perf_counter() - started)
