"""A view over a store whose every row read is a round trip (PostgreSQL) finds the rows a batch reads
first and fetches them in one query, then runs the batch: the same rows as reading one by one, on
every store, including handlers that read a row only because of another and handlers that fail
when a row they expect is missing."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from support.views import VIEW_STORES, drop_view_schema, open_view_store_for_test

from entities.social import Post, Published, Removed
from runtime import Envelope, SqliteJournal
from runtime.model.entity import model_of
from runtime.streams import view_store
from runtime.streams.handlers import on
from runtime.streams.view import Rows, View, ViewRunner

pytestmark = pytest.mark.anyio


class Count(msgspec.Struct):
    posts: int = 0
    first: str = ""


class Chained(View[Count], name="chained", sources=[Post]):
    """Per author, and a total that is read only once the author's own row is known to exist."""

    @on
    def published(self, rows: Rows[Count], e: Published, env: Envelope) -> None:
        mine = rows.get(e.author)
        if mine is None:  # a new author: the total of authors is read and moved on only then
            total = rows.get("@authors") or Count()
            rows.put("@authors", Count(total.posts + 1))
            mine = Count(first=env.entity_id)
        rows.put(e.author, msgspec.structs.replace(mine, posts=mine.posts + 1))

    @on
    def removed(self, rows: Rows[Count], e: Removed) -> None:
        mine = rows.get(e.author)
        assert mine is not None, "a post is removed after it was published"  # fails while the row is unfetched
        rows.put(e.author, msgspec.structs.replace(mine, posts=mine.posts - 1))


async def _journal(path: Path) -> SqliteJournal:
    journal = SqliteJournal(path)
    await journal.open()
    codec = model_of(Post).codec
    events: list[tuple[str, int, Any]] = []
    for i in range(60):
        events.append((f"p{i}", 1, Published(f"a{i % 7}", "x")))
        if i % 4 == 3:
            events.append((f"p{i}", 2, Removed(f"a{i % 7}")))
    for entity_id, seq, e in events:
        env = Envelope(
            entity_type="post", entity_id=entity_id, seq=seq, name=type(e).__name__, version=1,
            payload=codec.encode(e), recorded_at=time.time_ns(),
        )  # fmt: skip
        await journal.append([env], seq - 1)
    return journal


@pytest.mark.parametrize("kind", VIEW_STORES)
async def test_fetching_ahead_gives_the_rows_reading_one_by_one_gives(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = {"one": 0, "many": 0}
    if kind == "postgres":  # count the round trips the real store makes
        one, many = view_store._PostgresRows.get, view_store._PostgresRows.fetch

        def get(self: Any, key: str) -> bytes | None:
            reads["one"] += 1
            return one(self, key)

        def fetch(self: Any, keys: Iterable[str]) -> dict[str, bytes | None]:
            reads["many"] += 1
            return many(self, keys)

        monkeypatch.setattr(view_store._PostgresRows, "get", get)
        monkeypatch.setattr(view_store._PostgresRows, "fetch", fetch)
    journal = await _journal(tmp_path / "j.db")
    try:
        async with open_view_store_for_test(kind, tmp_path) as store:
            runner = ViewRunner(Chained, store, NATS(), prefix="fa", journal=journal, catchup_behind=1, catchup_page=16)
            assert await runner.catch_up_from_journal() == 75
            rows = await runner.query.all()
    finally:
        await journal.close()
    published = {f"a{a}": sum(1 for i in range(60) if i % 7 == a) for a in range(7)}
    removed = {f"a{a}": sum(1 for i in range(60) if i % 7 == a and i % 4 == 3) for a in range(7)}
    assert rows == {"@authors": Count(7)} | {
        f"a{a}": Count(published[f"a{a}"] - removed[f"a{a}"], f"p{a}") for a in range(7)
    }
    if kind == "postgres":
        await drop_view_schema(tmp_path)
        batches = 5  # 75 events, 16 a page
        assert reads["one"] == 0, "no row read one by one"
        assert reads["many"] <= 3 * batches, reads  # a pass for the authors, one for the total
