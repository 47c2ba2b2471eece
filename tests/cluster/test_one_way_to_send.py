"""Every sender inside a member reaches an entity another member owns: one way to send a command.

Three `memoir run --cluster` members on PostgreSQL run the feature app. A consumer's `ctx.send`,
a timer firing, a workflow step and an HTTP command each target entities spread over 256 shards,
so most are owned by a member other than the one sending (the test checks that some are, from the
cluster's buckets). Before, a consumer's commands reached only its own member's runtime: every
target owned elsewhere failed with `Moved` and was parked after five tries. Here every outcome is
exact and nothing is parked.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time

import pytest
from support.deployment import Deployment, Ownership
from support.waiting import eventually

from runtime import CommandError
from runtime.serve.service.forwarding import H_HOPS, H_INSIDE
from runtime.wire.protocol import command_subject, stream_prefix

pytestmark = pytest.mark.anyio

AUTHORS = 12


async def _singleton(d: Deployment, name: str) -> Ownership:
    """The cluster's ownership once `name` runs somewhere."""
    found: list[Ownership] = []

    async def running() -> bool:
        found[:] = [await d.ownership()]
        return name in found[0].singletons

    await eventually(running, 30, f"singleton {name} taken")
    return found[0]


async def _parked(d: Deployment) -> int:
    assert d.client.nc is not None
    info = await d.client.nc.jetstream().stream_info(f"{stream_prefix(d.prefix)}_DEADLETTER")
    return int(info.state.messages)


async def test_a_consumers_commands_reach_profiles_on_every_member(three_members: Deployment) -> None:
    d = three_members
    own = await _singleton(d, "consumer.count_posts")
    here = own.singletons["consumer.count_posts"]
    authors = [f"one-way-{n}" for n in range(AUTHORS)]
    elsewhere = [a for a in authors if own.owner("profile", a) not in (None, here)]
    assert elsewhere, "every profile is owned by the consumer's member: nothing tested"
    want = {a: n % 3 + 1 for n, a in enumerate(authors)}
    for a, posts in want.items():
        for p in range(posts + 1):
            await d.send("post", f"{a}-p{p}", "publish", {"author": a, "text": "hi"})
        await d.send("post", f"{a}-p0", "delete")  # an uncount_post too

    async def counted() -> bool:
        got = {a: (await d.send("profile", a, "get"))["posts"] for a in want}
        return got == want

    await eventually(counted, 60, "every profile counted by the consumer")
    assert await _parked(d) == 0
    print(f"consumer on {here}; {len(elsewhere)} of {AUTHORS} profiles owned by other members")


async def test_a_timer_fires_at_a_reservation_another_member_owns(three_members: Deployment) -> None:
    d = three_members
    await d.send("inventory", "one-way-sku", "open", {"units": 100})
    own = await _singleton(d, "timers.fire")
    here = own.singletons["timers.fire"]
    holds = [f"one-way-r{n}" for n in range(8)]
    assert any(own.owner("reservation", r) not in (None, here) for r in holds), "nothing owned elsewhere"
    for r in holds:
        assert await d.send("reservation", r, "hold", {"sku": "one-way-sku", "units": 2, "hold_for": 0.3}) == "held"

    async def released() -> bool:
        states = [await d.send("reservation", r, "get") for r in holds]
        stock = await d.send("inventory", "one-way-sku", "get")
        return all(s["status"] == "released" for s in states) and stock["units"] == 100

    # each expire is the timer's command; the stock moved by the consumer's (took, adjust back)
    await eventually(released, 60, "every hold released by its timer and its units back")
    assert await _parked(d) == 0


async def test_workflow_steps_move_money_between_members(three_members: Deployment) -> None:
    d = three_members
    accounts = [f"one-way-a{n}" for n in range(4)]
    for a in accounts:
        await d.send("account", a, "deposit", {"amount": 1_000})
    own = await d.ownership()
    transfers = {f"one-way-t{n}": (accounts[n % 4], accounts[(n + 1) % 4], n + 1) for n in range(8)}
    crossing = [
        t
        for t, (src, dst, _) in transfers.items()
        if {own.owner("account", src), own.owner("account", dst)} - {own.owner("transfer", t)}
    ]
    assert crossing, "every transfer's accounts live with it: nothing tested"
    for t, (src, dst, amount) in transfers.items():
        await d.send("transfer", t, "start", {"source": src, "target": dst, "amount": amount})

    async def ended() -> bool:
        states = [(await d.send("transfer", t, "get"))["status"] for t in transfers]
        return states == ["ended"] * len(transfers)

    await eventually(ended, 60, "every transfer ended")
    want = dict.fromkeys(accounts, 1_000)
    for src, dst, amount in transfers.values():
        want[src] -= amount
        want[dst] += amount
    assert {a: (await d.send("account", a, "get"))["balance"] for a in accounts} == want


async def test_a_client_cannot_claim_to_be_inside(three_members: Deployment) -> None:
    """`Memoir-Inside` from a client is dropped: a command only the consumer may send stays refused,
    whichever member takes it and wherever it is forwarded."""
    d = three_members
    holds = [f"one-way-claim-{n}" for n in range(8)]
    for r in holds:
        await d.send("reservation", r, "hold", {"sku": "one-way-none", "units": 1, "hold_for": 600})
    headers = {H_INSIDE: "1", H_HOPS: "0"}
    for r in holds:
        subject = command_subject(d.prefix, "reservation", r, "took")
        with pytest.raises(CommandError) as refused:
            await d.client.request(subject, b'{"units": 99}', headers=headers, timeout=10)
        assert refused.value.code in ("forbidden", "unauthorized"), refused.value
    assert [(await d.send("reservation", r, "get"))["taken"] for r in holds] == [0] * len(holds)


async def test_http_commands_reach_owners_here_and_elsewhere(three_members: Deployment) -> None:
    """Each member's gateway takes commands for an item it owns (run in process) and for one
    another member owns (sent over NATS, where the door forwards it)."""
    d = three_members
    own = await d.ownership()
    today = dt.date.today().isoformat()
    for i in range(len(d.processes)):
        me = d.member_id(own, i)
        ids = [f"one-way-h{i}-{n}" for n in range(200)]
        here = next(x for x in ids if own.owner("inventory", x) == me)
        elsewhere = next(x for x in ids if own.owner("inventory", x) not in (None, me))
        async with d.http(i) as http:
            for item in (here, elsewhere):
                opened = await http.post(f"/inventory/{item}/open", json={"units": 5})
                assert opened.status_code == 200, opened.text
                key = {"Idempotency-Key": f"{item}-r"}
                received = await http.post(f"/inventory/{item}/receive", json={"units": 2, "on": today}, headers=key)
                again = await http.post(f"/inventory/{item}/receive", json={"units": 2, "on": today}, headers=key)
                assert (received.status_code, again.status_code) == (200, 200), (received.text, again.text)
                assert again.json()["duplicate"] is True
                refused = await http.post(f"/inventory/{item}/sell", json={"units": 99, "on": today})
                assert (refused.status_code, refused.json()["error"]["code"]) == (422, "rejected")
        for item in (here, elsewhere):
            assert (await d.send("inventory", item, "get"))["units"] == 7
        if i == 0:  # after the check: these add units
            await _print_latency(d, here, elsewhere, today)


async def _print_latency(d: Deployment, here: str, elsewhere: str, today: str) -> None:
    """Median HTTP command time on member 0, owned there and owned elsewhere (printed, never asserted)."""
    async with d.http(0) as http:
        for label, item in (("owned here", here), ("owned elsewhere", elsewhere)):
            took = []
            for _ in range(40):
                started = time.perf_counter()
                r = await http.post(f"/inventory/{item}/receive", json={"units": 1, "on": today})
                took.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
            print(f"HTTP command {label}: median {statistics.median(took) * 1000:.2f} ms over {len(took)}")
