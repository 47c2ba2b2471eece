"""The feature matrix: each example scenario against one process and against three cluster members.

Every test takes the one `deployment` fixture, parametrized over one `memoir run` and three
`memoir run --cluster` members on PostgreSQL (journal and view store), so a feature that works
only in one process fails here. The scenarios: the social consumer and view, transfer
workflows, reservations (a timer, a consumer, a refusal), forgetting an encrypted entity, and
views rebuilt from history. Bounded (a few hundred commands), the file runs in minutes.
"""

from __future__ import annotations

from typing import Any

import pytest
from streams.timers.ledger import expected_balances
from support.deployment import Deployment
from support.waiting import eventually

from runtime import CommandError

pytestmark = pytest.mark.anyio


async def _all(d: Deployment, entity_type: str, ids: list[str], command: str = "get") -> dict[str, Any]:
    return {i: await d.send(entity_type, i, command) for i in ids}


async def test_the_social_consumer_and_view(deployment: Deployment) -> None:
    d = deployment
    authors = [f"soc-{n}" for n in range(10)]
    want = {a: n % 4 + 1 for n, a in enumerate(authors)}
    for a, posts in want.items():
        for p in range(posts + 1):
            await d.send("post", f"{a}-p{p}", "publish", {"author": a, "text": f"post {p}"})
        await d.send("post", f"{a}-p0", "delete")

    async def counted() -> bool:
        return {a: s["posts"] for a, s in (await _all(d, "profile", authors)).items()} == want

    await eventually(counted, 60, "every profile counted by the consumer")

    async def viewed() -> bool:
        rows = {a: await d.view_get("posts_by_author", a) for a in authors}
        return all(r is not None and r["posts"] == want[a] for a, r in rows.items())

    await eventually(viewed, 60, "the view caught up")
    row = await d.view_get("posts_by_author", authors[-1])
    assert row["author"] == authors[-1] and row["latest"].startswith(f"{authors[-1]}-p")


ACCOUNTS, TRANSFERS, OPENING = 4, 16, 500


def transfer(i: int) -> dict[str, object]:
    target = "closed" if i % 5 == 0 else f"a{(i + 1) % ACCOUNTS}"
    return {"source": f"a{i % ACCOUNTS}", "target": target, "amount": i % 7 + 1}


async def test_transfer_workflows(deployment: Deployment) -> None:
    d = deployment
    prefix = "wf-"  # account ids are those of the ledger's expectations, under a prefix of this test

    def named(t: dict[str, object]) -> dict[str, object]:
        return {**t, "source": prefix + str(t["source"]), "target": prefix + str(t["target"])}

    for a in range(ACCOUNTS):
        await d.send("account", f"{prefix}a{a}", "deposit", {"amount": OPENING})
    await d.send("account", f"{prefix}closed", "close")
    for i in range(TRANSFERS):
        await d.send("transfer", f"{prefix}t{i}", "start", named(transfer(i)))
    outcomes: dict[int, Any] = {}

    async def finished() -> bool:
        for i in range(TRANSFERS):
            out = await d.send("transfer", f"{prefix}t{i}", "get")
            if out["status"] not in ("ended", "failed"):
                return False
            outcomes[i] = out
        return True

    await eventually(finished, 90, "every transfer ended")
    names = [f"a{n}" for n in range(ACCOUNTS)] + ["closed"]
    balances = {a: (await d.send("account", prefix + a, "get"))["balance"] for a in names}
    assert balances == expected_balances(outcomes, transfer, ACCOUNTS, OPENING)


async def test_reservations_timers_and_a_refusal(deployment: Deployment) -> None:
    d = deployment
    await d.send("inventory", "res-sku", "open", {"units": 10})
    await d.send("reservation", "res-paid", "hold", {"sku": "res-sku", "units": 3, "hold_for": 600})
    await d.send("reservation", "res-expires", "hold", {"sku": "res-sku", "units": 4, "hold_for": 0.3})
    await d.send("reservation", "res-too-many", "hold", {"sku": "res-sku", "units": 50, "hold_for": 600})
    await d.send("reservation", "res-paid", "pay")
    ids = ["res-paid", "res-expires", "res-too-many"]

    async def settled() -> bool:
        states = await _all(d, "reservation", ids)
        stock = await d.send("inventory", "res-sku", "get")
        outcome = {r: (s["status"], s["taken"]) for r, s in states.items()}
        want = {"res-paid": ("paid", 3), "res-expires": ("released", 4), "res-too-many": ("refused", 0)}
        return outcome == want and stock["units"] == 7  # the paid hold's units stay taken

    await eventually(settled, 60, "the hold paid, the one expired by its timer, the one refused")


async def test_forgetting_and_a_view_rebuilt(deployment: Deployment) -> None:
    d = deployment
    for diary, lines in (("forget-d1", 3), ("forget-d2", 2)):
        for n in range(lines):
            await d.send("diary", diary, "write", {"text": f"line {n}"})
    for p in range(2):
        await d.send("post", f"forget-ann-p{p}", "publish", {"author": "forget-ann", "text": "hi"})

    async def viewed() -> bool:
        rows = [await d.view_get("diary_lines", k) for k in ("forget-d1", "forget-d2")]
        posts = await d.view_get("posts_by_author", "forget-ann")
        return [None if r is None else r["lines"] for r in rows] == [3, 2] and (posts or {}).get("posts") == 2

    await eventually(viewed, 60, "the views caught up")
    assert (await d.forget("diary", "forget-d1"))["forgotten"] is True
    with pytest.raises(CommandError) as gone:
        await d.send("diary", "forget-d1", "get")
    assert gone.value.code == "forgotten"
    assert await d.send("diary", "forget-d2", "get") == ["line 0", "line 1"]

    await d.replay("diary_lines")  # reset now, history replayed after: nothing of the forgotten diary comes back
    await d.replay("posts_by_author")  # a view over plain events comes back whole

    async def rebuilt() -> bool:
        d2 = await d.view_get("diary_lines", "forget-d2")
        posts = await d.view_get("posts_by_author", "forget-ann")
        return (d2 or {}).get("lines") == 2 and (posts or {}).get("posts") == 2

    await eventually(rebuilt, 60, "both views rebuilt from history")
    assert await d.view_get("diary_lines", "forget-d1") is None
