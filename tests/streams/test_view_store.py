"""One contract for every view store (memory, SQLite, PostgreSQL): rows and checkpoints land together
or not at all, reads inside a batch see the store, scans page in bytewise key order, and concurrent
batches of one view do not lose each other's updates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.model.errors import ConfigError
from runtime.streams.view_store import RawRows, SqliteViewStore, ViewStore, open_view_store

pytestmark = pytest.mark.anyio


def put(rows: Mapping[str, bytes | None], checkpoints: Mapping[str, int]) -> Any:
    return lambda raw: (rows, checkpoints)


async def test_rows_and_checkpoint_land_together(store: ViewStore) -> None:
    await store.transact("v", put({"a": b"1", "b": b"2"}, {"S": 7}))
    assert await store.get("v", "a") == b"1"
    assert await store.checkpoints("v") == {"S": 7}
    await store.transact("v", put({"a": None, "c": b"3"}, {"S": 9, "T": 1}))  # None deletes
    assert await store.get("v", "a") is None
    assert await store.scan("v") == [("b", b"2"), ("c", b"3")]
    assert await store.checkpoints("v") == {"S": 9, "T": 1}
    assert await store.get("other", "b") is None, "views do not see each other's rows"


async def test_a_failing_batch_writes_nothing(store: ViewStore) -> None:
    await store.transact("v", put({"a": b"1"}, {"S": 1}))

    def fails(raw: RawRows) -> Any:
        assert raw.get("a") == b"1"
        raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError, match="handler bug"):
        await store.transact("v", fails)
    assert await store.scan("v") == [("a", b"1")]
    assert await store.checkpoints("v") == {"S": 1}


async def test_scan_pages_in_bytewise_key_order(store: ViewStore) -> None:
    keys = ["b", "B", "a", "é", "a b", "A", "z", "ß", "10", "9"]
    await store.transact("v", put({k: k.encode() for k in keys}, {}))
    expected = sorted(keys, key=lambda k: k.encode())
    pages: list[str] = []
    after = ""
    while page := await store.scan("v", after=after, limit=3):
        pages += [k for k, _ in page]
        after = page[-1][0]
    assert pages == expected


async def test_concurrent_batches_of_one_view_lose_no_update(store: ViewStore) -> None:
    def increment(raw: RawRows) -> Any:
        n = int(raw.get("n") or b"0")
        return {"n": str(n + 1).encode()}, {}

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(store.transact, "v", increment)
    assert await store.get("v", "n") == b"20"


async def test_reset_forgets_one_view(store: ViewStore) -> None:
    await store.transact("v", put({"a": b"1"}, {"S": 3}))
    await store.transact("w", put({"a": b"2"}, {"S": 4}))
    await store.reset("v")
    assert await store.scan("v") == [] and await store.checkpoints("v") == {}
    assert await store.scan("w") == [("a", b"2")] and await store.checkpoints("w") == {"S": 4}


async def test_the_sqlite_store_takes_its_page_cache_from_the_url(tmp_path: Path) -> None:
    store = open_view_store(f"sqlite:///{tmp_path}/views.db?cache_mib=8")
    assert isinstance(store, SqliteViewStore) and store.cache_mib == 8
    async with store:
        assert await store._run(lambda c: c.execute("PRAGMA cache_size").fetchone()[0]) == -8 * 1024
    assert isinstance(default := open_view_store(f"sqlite:///{tmp_path}/v.db"), SqliteViewStore)
    assert default.cache_mib == 64
    for bad in ("0", "lots", "70000"):
        with pytest.raises(ConfigError, match="cache_mib must be"):
            open_view_store(f"sqlite:///{tmp_path}/views.db?cache_mib={bad}")
