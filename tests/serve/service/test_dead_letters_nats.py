"""Dead letters over NATS (`{prefix}.admin.deadletters.list|show|replay|purge`) and the consumer
metrics, on a real nats-server: a replay runs the consumer again with the event's own command ids,
so what happened before the failure is not repeated and what did not happen now does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from support.deadletter_app import FIX_FILE, app
from support.waiting import eventually

from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.serve.service.metrics import Metrics
from runtime.testing.harness import served

pytestmark = pytest.mark.anyio
P = "dl"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, NATS]]:
    async with EmbeddedNats(tmp_path / "nats") as server, served(app, server.url, prefix=P) as svc:
        nc = await nats.connect(server.url)
        yield svc, nc
        await nc.close()


async def ask(nc: NATS, op: str, body: dict[str, Any]) -> Any:
    msg = await nc.request(f"{P}.admin.deadletters.{op}", json.dumps(body).encode(), timeout=10)
    return json.loads(msg.data)


async def posts(svc: Service, who: str) -> int:
    return int((await svc.runtime.ask("profile", who, "get")).result.posts)


def metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(f'{name}{{consumer="tally"}}'))
    return float(line.rsplit(" ", 1)[1])


async def test_list_show_replay_purge(
    service: tuple[Service, NATS], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, nc = service
    fix = tmp_path / "fixed"
    monkeypatch.setenv(FIX_FILE, str(fix))
    runner = svc.consumers["tally"]
    for post, text in (("ok-1", "fine"), ("bad-1", "poison"), ("bad-2", "poison")):
        await svc.runtime.ask("post", post, "publish", {"author": "ann", "text": text})
    await eventually(lambda: runner.handled == 1 and runner.dead_lettered == 2, what="one handled, two parked")

    listed = await ask(nc, "list", {"consumer": "tally"})
    assert listed["ok"], listed
    parked = listed["result"]
    assert [p["event"] for p in parked] == ["post/bad-1/1", "post/bad-2/1"]
    assert all(p["name"] == "Published" and "cannot handle" in p["error"] for p in parked)
    first, second = parked[0]["seq"], parked[1]["seq"]
    assert (await ask(nc, "list", {"consumer": "tally", "after": first}))["result"] == [parked[1]]

    shown = (await ask(nc, "show", {"consumer": "tally", "seq": first}))["result"]
    assert shown["payload"] == {"author": "ann", "text": "poison"}
    assert shown["subject"] == f"{P}.events.post.bad-1"

    text = (await Metrics(svc).render()).decode()
    assert metric(text, "memoir_consumer_parked") == 2
    assert metric(text, "memoir_consumer_dead_lettered_total") == 2
    assert metric(text, "memoir_consumer_handled_total") == 1
    assert metric(text, "memoir_consumer_retried_total") == 2  # each poison post retried once
    assert metric(text, "memoir_consumer_lag") == 0

    still = (await ask(nc, "replay", {"consumer": "tally", "seq": first}))["result"]
    assert still["replayed"] == [] and "cannot handle bad-1 yet" in still["failed"][0]["error"]
    assert (await posts(svc, "ann"), await posts(svc, "audit")) == (3, 1)

    fix.touch()  # the handler is fixed: the replay goes through
    done = (await ask(nc, "replay", {"consumer": "tally", "seq": first}))["result"]
    assert done == {"replayed": [first], "failed": []}
    assert (await posts(svc, "ann"), await posts(svc, "audit")) == (3, 2)  # ann's count was not repeated
    gone = await ask(nc, "replay", {"consumer": "tally", "seq": first})
    assert gone["error"]["code"] == "not_found"
    assert [p["seq"] for p in (await ask(nc, "list", {"consumer": "tally"}))["result"]] == [second]

    assert (await ask(nc, "purge", {"consumer": "tally"}))["result"] == {"purged": 1}
    assert (await ask(nc, "list", {"consumer": "tally"}))["result"] == []
    assert (await posts(svc, "audit")) == 2  # purged, not handled
    assert metric((await Metrics(svc).render()).decode(), "memoir_consumer_parked") == 0


async def test_unknown_consumer_and_bad_requests(service: tuple[Service, NATS]) -> None:
    _, nc = service
    unknown = await ask(nc, "list", {"consumer": "nope"})
    assert unknown["error"]["code"] == "unknown_consumer" and "tally" in unknown["error"]["message"]
    assert (await ask(nc, "list", {"consumer": "tally", "limit": 0}))["error"]["code"] == "invalid"
    assert (await ask(nc, "show", {"consumer": "tally"}))["error"]["code"] == "invalid"
    assert (await ask(nc, "list", {"consumer": "tally", "extra": 1}))["error"]["code"] == "invalid"
    assert (await ask(nc, "show", {"consumer": "tally", "seq": 99}))["error"]["code"] == "not_found"
    assert (await ask(nc, "frobnicate", {"consumer": "tally"}))["error"]["code"] == "unknown_command"
