"""Queries on views, one suite for every store (memory, SQLite, PostgreSQL): each operator, and/or,
order and limit, count, keyset pages under concurrent writes, undeclared fields refused, indexes
created, rebuilt when their declaration changes, and used by the SQL planners."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.views import VIEW_STORES, drop_view_schema, open_view_store_for_test

from runtime.model.errors import ConfigError
from runtime.streams.query import And, Eq, Ge, In, Query, QueryError, decode_token, plan
from runtime.streams.query_text import parse_order, parse_where
from runtime.streams.view import View, ViewQuery
from runtime.streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore, ViewStore

pytestmark = pytest.mark.anyio


class Account(msgspec.Struct):
    owner: str
    region: str
    name: str
    balance: int
    closed: str | None = None
    active: bool = True


class Accounts(View[Account], name="accounts", indexes=["owner", ("region", "name"), "balance", "closed", "active"]):
    pass


ROWS = {
    "a1": Account("ann", "eu", "alpha", 10),
    "a2": Account("ann", "us", "beta", 250, closed="2026-01-01"),
    "b1": Account("bob", "eu", "gamma", -5),
    "b2": Account("bob", "eu", "alps", 0, active=False),
    "c1": Account("cy", "apac", "Beta", 99),
    "d1": Account("dé", "eu", "éclair", 10, closed="2025-06-30"),
}
ENC = msgspec.json.Encoder()


async def opened(kind: str, tmp_path: Path) -> AsyncIterator[ViewStore]:
    async with open_view_store_for_test(kind, tmp_path) as s:
        yield s
    if kind == "postgres":
        await drop_view_schema(tmp_path)


@pytest.fixture(params=VIEW_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ViewStore]:
    async for s in opened(request.param, tmp_path):
        yield s


async def write(store: ViewStore, rows: dict[str, Account | None], view: str = "accounts") -> None:
    encoded = {k: None if r is None else ENC.encode(r) for k, r in rows.items()}
    await store.transact(view, lambda raw: (encoded, {}))


@pytest.fixture
async def accounts(store: ViewStore) -> ViewQuery[Account]:
    await write(store, dict(ROWS))
    return ViewQuery(Accounts, store)


async def keys(q: ViewQuery[Account], where: Any, **kw: Any) -> list[str]:
    return [k for k, _ in (await q.query(where, **kw)).rows]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('owner = "ann"', {"a1", "a2"}),
        ('owner != "ann"', {"b1", "b2", "c1", "d1"}),
        ("balance < 10", {"b1", "b2"}),
        ("balance <= 10", {"a1", "b1", "b2", "d1"}),
        ("balance > 10", {"a2", "c1"}),
        ("balance >= 99", {"a2", "c1"}),
        ('region in ("us", "apac")', {"a2", "c1"}),
        ('name prefix "al"', {"a1", "b2"}),  # bytewise: "Beta" and "éclair" are not "al…" or "b…"
        ('name prefix "é"', {"d1"}),
        ("closed is null", {"a1", "b1", "b2", "c1"}),
        ("closed is not null", {"a2", "d1"}),
        ('closed != "2025-06-30"', {"a2"}),  # a null field passes no comparison, as in SQL
        ("active = false", {"b2"}),
        ('owner = "bob" and balance >= 0', {"b2"}),
        ('owner = "cy" or region = "us"', {"a2", "c1"}),
        ('(owner = "ann" or owner = "bob") and not_a_word is null', None),  # undeclared: refused
        ('region = "eu" and (balance < 0 or closed is not null)', {"b1", "d1"}),
    ],
)
async def test_each_operator(accounts: ViewQuery[Account], where: str, expected: set[str] | None) -> None:
    if expected is None:
        with pytest.raises(QueryError, match="'not_a_word' is not declared"):
            await accounts.query(where)
        return
    assert set(await keys(accounts, where)) == expected
    assert await accounts.count(where) == len(expected)


async def test_the_json_tree_is_the_same_query(accounts: ViewQuery[Account]) -> None:
    body = (
        b'{"where": {"op": "and", "terms": [{"op": "=", "field": "owner", "value": "ann"},'
        b' {"op": ">=", "field": "balance", "value": 100}]}, "order_by": ["-balance"], "limit": 5}'
    )
    q = msgspec.json.decode(body, type=Query)
    assert q.where == And([Eq("owner", "ann"), Ge("balance", 100)]) == parse_where('owner = "ann" and balance >= 100')
    assert [k for k, _ in (await accounts.run(q)).rows] == ["a2"]


async def test_order_and_limit(accounts: ViewQuery[Account]) -> None:
    assert await keys(accounts, None, order_by=["balance"]) == ["b1", "b2", "a1", "d1", "c1", "a2"]
    assert await keys(accounts, None, order_by=["-balance"], limit=3) == ["a2", "c1", "d1"]  # ties: key, downwards
    # nulls first going up, last going down; the key breaks ties
    assert await keys(accounts, None, order_by=["closed"]) == ["a1", "b1", "b2", "c1", "d1", "a2"]
    assert await keys(accounts, None, order_by=["-closed"]) == ["a2", "d1", "c1", "b2", "b1", "a1"]
    assert await keys(accounts, 'region = "eu"', order_by=["region", "name"]) == ["a1", "b2", "b1", "d1"]
    assert await keys(accounts, In("owner", ["bob", "ann"]), order_by=["owner", "-balance"]) == [
        "a2",
        "a1",
        "b2",
        "b1",
    ]


async def test_bad_queries_say_what_is_wrong(accounts: ViewQuery[Account]) -> None:
    with pytest.raises(QueryError, match="cannot order by 'secret'"):
        await accounts.query(None, order_by=["secret"])
    with pytest.raises(QueryError, match="'balance' holds number values, not 'ten'"):
        await accounts.query('balance = "ten"')
    with pytest.raises(QueryError, match="limit must be between 1 and 10000"):
        await accounts.query(None, limit=0)
    with pytest.raises(QueryError, match="prefix needs a text field"):
        await accounts.query(parse_where('balance prefix "1"'))
    with pytest.raises(QueryError, match="not one this view gave"):
        await accounts.query(None, page="!!!")
    page = await accounts.query(None, order_by=["balance"], limit=2)
    with pytest.raises(QueryError, match="belongs to another query"):
        await accounts.query(None, order_by=["name"], page=page.next)
    with pytest.raises(QueryError, match="expected a value"):
        parse_where("owner = ann")
    query = Query(order_by=["balance"], limit=2)
    fingerprint = decode_token("accounts", page.next or "").fingerprint
    forged = base64.urlsafe_b64encode(msgspec.msgpack.encode([fingerprint, ["ten"], "a1"]))  # a number field
    with pytest.raises(QueryError, match="not one this view gave"):
        await accounts.run(msgspec.structs.replace(query, page=forged.decode()))
    assert parse_order("balance desc, name") == ["-balance", "name"] == parse_order("-balance,name")
    with pytest.raises(QueryError, match="asc or desc"):
        parse_order("balance downwards")


def test_an_undeclared_index_field_is_refused_when_the_view_is_made() -> None:
    with pytest.raises(ConfigError, match="view wrong: index field 'ownr' is not a field of Account"):

        class Wrong(View[Account], name="wrong", indexes=["ownr"]):
            pass

    class Nested(msgspec.Struct):
        tags: list[str]

    with pytest.raises(ConfigError, match="view nested: index field 'tags' must be str, int, float or bool"):

        class NestedView(View[Nested], name="nested", indexes=["tags"]):
            pass


async def pages(q: ViewQuery[Account], where: Any, order_by: list[str], limit: int, between: Any) -> list[str]:
    seen: list[str] = []
    token = None
    while True:
        page = await q.query(where, order_by=order_by, limit=limit, page=token)
        seen += [k for k, _ in page.rows]
        if page.next is None:
            return seen
        token = page.next
        await between()


@pytest.mark.parametrize("order_by", [["balance"], ["-balance"], ["closed"], ["-closed", "owner"], []])
async def test_pages_under_concurrent_writes_miss_and_repeat_nothing(store: ViewStore, order_by: list[str]) -> None:
    rng = random.Random(25)
    stable = {
        f"s{i:03}": Account(
            f"o{rng.randrange(5)}", "eu", f"n{i}", rng.randrange(-20, 20), closed=rng.choice([None, "x", "y"])
        )
        for i in range(60)
    }
    await write(store, dict(stable))
    q = ViewQuery(Accounts, store)
    churn = iter(range(10_000))

    async def between() -> None:  # new rows anywhere in the order, and some churned rows changed or gone
        n = next(churn)
        await write(
            store,
            {
                f"c{n:04}": Account("o1", "eu", "c", rng.randrange(-30, 30), closed=rng.choice([None, "x"])),
                f"c{max(0, n - 2):04}": None if n % 2 else Account("o9", "us", "moved", rng.randrange(-30, 30)),
            },
        )

    seen = await pages(q, None, order_by, 7, between)
    assert {k: seen.count(k) for k in stable} == dict.fromkeys(stable, 1), "each unchanged row exactly once"


async def test_count(accounts: ViewQuery[Account]) -> None:
    assert await accounts.count() == len(ROWS)
    assert await accounts.count('region = "eu" and active = true') == 3


async def index_names(store: ViewStore, view: str) -> set[str]:
    if isinstance(store, MemoryViewStore):
        return {f"mem:{i.digest(view)}" for i in store.indexes.get(view, [])}
    if isinstance(store, SqliteViewStore):
        rows = await store._run(
            lambda c: c.execute("SELECT name FROM sqlite_master WHERE type='index' AND name LIKE 'vq_%'").fetchall()
        )
        return {r[0] for r in rows}
    assert isinstance(store, PostgresViewStore)
    async with store._conn() as conn:
        rows = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname=$1 AND indexname LIKE 'vq_%'", store.schema
        )
    return {r[0] for r in rows}


async def test_indexes_follow_the_declaration(store: ViewStore) -> None:
    await write(store, dict(ROWS))
    first = ViewQuery(Accounts, store)
    await first.declare()
    before = await index_names(store, "accounts")
    assert len(before) == len(Accounts.query_indexes) == 5

    class AccountsV2(View[Account], name="accounts", indexes=["owner", ("region", "balance")]):
        pass

    second = ViewQuery(AccountsV2, store)
    assert await keys(second, 'region = "eu"', order_by=["region", "balance"]) == ["b1", "b2", "a1", "d1"]
    after = await index_names(store, "accounts")
    assert len(after) == 2
    assert len(before & after) == 1, "owner's index stays; the changed and the dropped ones are gone"
    with pytest.raises(QueryError, match="'name' is not declared"):
        await second.query('name = "alpha"')


@pytest.fixture(params=[s for s in VIEW_STORES if s != "memory"])  # the memory store has no plan to read
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ViewStore]:
    async for s in opened(request.param, tmp_path):
        yield s


async def test_the_planner_uses_the_index(sql_store: ViewStore) -> None:
    store = sql_store
    rng = random.Random(7)
    await write(
        store,
        {
            f"k{i:05}": Account(f"o{i % 500}", rng.choice(["eu", "us", "apac"]), f"n{i}", rng.randrange(10_000))
            for i in range(5000)
        },
    )
    q = ViewQuery(Accounts, store)
    await q.declare()
    if isinstance(store, PostgresViewStore):
        async with store._conn() as conn:
            await conn.execute(f"ANALYZE {store.schema}.view_rows")
    names = {index.fields: f"vq_{index.digest('accounts')}" for index in Accounts.query_indexes}
    by_fields = {tuple(f.name for f in fields): name for fields, name in names.items()}

    async def explain(query: Query) -> str:
        assert isinstance(store, SqliteViewStore | PostgresViewStore)
        return await store.explain("accounts", plan("accounts", Accounts.query_fields, query))

    equality = await explain(Query(where=Eq("owner", "o42")))
    assert by_fields[("owner",)] in equality, equality
    ranged = await explain(Query(where=Ge("balance", 9990), order_by=["balance"], limit=10))
    assert by_fields[("balance",)] in ranged, ranged
    composite = await explain(Query(where=Eq("region", "eu"), order_by=["region", "name"], limit=10))
    assert by_fields[("region", "name")] in composite, composite
    if isinstance(store, SqliteViewStore):
        assert "TEMP B-TREE" not in ranged, "the index gives the order"
