"""Replaying a parked event in a three-member cluster on PostgreSQL: whichever member answers the
request runs the consumer's handler, whose commands reach each target's owner; the event's own
command ids keep the effect exactly once.

The feature app's consumers do not fail on purpose, so the parked messages are written here as
`ConsumerRunner._dead_letter` writes them (the event's headers and payload, `Memoir-Error`,
`Memoir-Original-Subject`): one copy of an event the consumer already handled (its replay must
change nothing), and one of an event whose handling was lost (its replay must count the post).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from support.deployment import Deployment
from support.waiting import eventually

from runtime.streams.consumer import dead_letter_subject
from runtime.wire.protocol import stream_name

pytestmark = pytest.mark.anyio


async def ask(d: Deployment, op: str, body: dict[str, Any]) -> Any:
    assert d.client.nc is not None
    msg = await d.client.nc.request(f"{d.prefix}.admin.deadletters.{op}", json.dumps(body).encode(), timeout=30)
    answer = json.loads(msg.data)
    assert answer["ok"], answer
    return answer["result"]


async def test_replay_reaches_the_owners_and_is_exactly_once(three_members: Deployment) -> None:
    d = three_members
    assert d.client.nc is not None
    js = d.client.nc.jetstream()
    await d.send("post", "dl-real", "publish", {"author": "dl-a", "text": "hi"})

    async def counted(author: str, n: int) -> bool:
        return bool((await d.send("profile", author, "get"))["posts"] == n)

    await eventually(lambda: counted("dl-a", 1), 30, "the post counted by the consumer")
    real = await js.get_msg(stream_name(d.prefix, "post"), subject=f"{d.prefix}.events.post.dl-real")
    base = {k: v for k, v in (real.headers or {}).items() if not k.startswith("Nats-")}
    lost = msgspec.json.encode({"author": "dl-b", "text": "lost"})
    for subject, data in ((real.subject, real.data), (f"{d.prefix}.events.post.dl-lost", lost)):
        headers = {**base, "Memoir-Error": "TimeoutError: lost", "Memoir-Original-Subject": subject}
        await js.publish(dead_letter_subject(d.prefix, "count_posts"), data, headers=headers)

    parked = await ask(d, "list", {"consumer": "count_posts"})
    assert [p["event"] for p in parked] == ["post/dl-real/1", "post/dl-lost/1"]
    outcome = await ask(d, "replay", {"consumer": "count_posts"})
    assert outcome == {"replayed": [p["seq"] for p in parked], "failed": []}
    assert await counted("dl-a", 1), "the handled event's replay counted it again"
    assert await counted("dl-b", 1), "the lost event's replay did not count it"
    assert await ask(d, "list", {"consumer": "count_posts"}) == []

    again = await js.publish(dead_letter_subject(d.prefix, "count_posts"), lost, headers=headers)
    assert (await ask(d, "replay", {"consumer": "count_posts", "seq": again.seq})) == {
        "replayed": [again.seq],
        "failed": [],
    }
    assert await counted("dl-b", 1), "a second replay of one event repeated its effect"
