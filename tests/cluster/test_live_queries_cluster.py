"""Live queries in a three-member cluster, across a rebuild (`memoir replay VIEW`) and the SIGKILL of
the member running the view's singleton: a subscriber over NATS (the change notices and the query
door, as a client in any language follows them) and one over Server-Sent Events (a surviving
member's HTTP gateway) each keep a result that ends equal to the truth, with no row added twice,
changed before it was added or removed when it was not there; where notices were lost (the killed
member committed a batch it never announced) the subscriber is told to resync and its new snapshot
is right. Posts keep coming the whole time."""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from support.deployment import KINDS, Deployment, deployed
from support.waiting import eventually

from runtime.streams.query import MAX_LIMIT, Query, Where
from runtime.streams.query_live import Batch, diff
from runtime.streams.query_text import parse_where
from runtime.wire.protocol import decode_answer

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

WHERE = "posts >= 2"
AUTHORS = 6
MAX_SESSIONS = 40  # resubscriptions a follower may need: a few per rebuild or fail-over, never a loop


@pytest.fixture(scope="module")
async def members(nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    tmp = Path(tmp_path_factory.mktemp("live_members"))
    async with deployed(KINDS[1], nats_cluster.urls, tmp, http=True, app="tests.cluster.live_app:app") as d:
        yield d


class Follower:
    """A live result as its subscriber keeps it: a snapshot, then each change, refusing a double or a gap."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, Any] = {}
        self.sessions = 0  # snapshots taken (the first, then one per resync or reconnect)
        self.resyncs = 0  # told to resync (a version gap)
        self.kinds: collections.Counter[str] = collections.Counter()

    def snapshot(self, rows: dict[str, Any]) -> None:
        self.sessions += 1
        assert self.sessions <= MAX_SESSIONS, f"{self.name}: {self.sessions} snapshots"
        self.rows = dict(rows)

    def change(self, kind: str, key: str, row: Any) -> None:
        if kind == "added":
            assert key not in self.rows, f"{self.name}: {key} added twice"
            self.rows[key] = row
        elif kind == "changed":
            assert key in self.rows, f"{self.name}: {key} changed before it was added"
            self.rows[key] = row
        else:
            assert kind == "removed", kind
            assert self.rows.pop(key, None) is not None, f"{self.name}: {key} removed but not there"
        self.kinds[kind] += 1

    def posts(self) -> dict[str, int]:
        return {k: int(r["posts"]) for k, r in self.rows.items()}


async def follow_nats(nc: NATS, prefix: str, where: Where, f: Follower) -> None:
    """The protocol of the views guide: subscribe to the notices, query at a version, apply the
    notices above it in order; a skipped version means resync (query again)."""
    subject = f"{prefix}.view.authors"
    body = msgspec.json.encode(Query(where=where, limit=MAX_LIMIT))
    while True:
        sub = await nc.subscribe(f"{subject}.changes", pending_msgs_limit=10_000)
        try:
            try:
                answer = decode_answer((await nc.request(f"{subject}.query", body, timeout=5)).data)
            except (NatsTimeoutError, NoRespondersError):
                continue  # a member going down mid-answer: ask again
            if not answer.ok:
                continue  # the view store briefly away: ask again
            version = int(answer.result["version"])
            f.snapshot(dict(answer.result["rows"]))
            raw = {k: msgspec.json.encode(r) for k, r in f.rows.items()}
            while True:
                try:
                    note = msgspec.json.decode((await sub.next_msg(timeout=5)).data)
                except NatsTimeoutError:
                    continue
                if note["version"] <= version:
                    continue
                if note["version"] != version + 1:
                    f.resyncs += 1
                    break
                version = note["version"]
                writes = {k: None if r is None else msgspec.json.encode(r) for k, r in note["rows"].items()}
                for c in diff(where, Batch(version, writes, note["reset"]), raw, msgspec.json.decode):
                    f.change(c.kind, c.key, c.row)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def follow_sse(http: httpx.AsyncClient, f: Follower) -> None:
    """`GET /views/authors?live=1&where=…` on one gateway; after `resync` (or a dropped stream), again."""
    params = {"live": "1", "where": WHERE}
    while True:
        with contextlib.suppress(httpx.HTTPError):
            async with http.stream("GET", "/views/authors", params=params, timeout=httpx.Timeout(10, read=30)) as r:
                if r.status_code != 200:
                    await r.aread()
                    continue  # the query door briefly unanswered: connect again
                event, data = "", ""
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        data = line.removeprefix("data: ")
                    elif line == "" and event:
                        got = json.loads(data)
                        if event == "snapshot":
                            f.snapshot(dict(got["rows"]))
                        elif event == "resync":
                            f.resyncs += 1
                        else:
                            f.change(event, got["key"], got["row"])
                        event = ""


async def test_live_queries_across_a_rebuild_and_the_view_members_sigkill(
    members: Deployment, nats_cluster: NatsCluster
) -> None:
    d = members
    assert d.client.nc is not None
    counts: collections.Counter[str] = collections.Counter()
    sent = 0

    async def publish(n: int) -> None:
        nonlocal sent
        for i in range(sent, sent + n):
            author = f"a{i % AUTHORS}" if i % 5 else f"a{i % (AUTHORS + 3)}"  # some authors stay below 2
            await d.send("post", f"lq{i}", "publish", {"author": author, "text": "x"})
            counts[author] += 1
        sent += n

    def truth() -> dict[str, int]:
        return {a: n for a, n in counts.items() if n >= 2}

    ownership = await d.ownership()
    runner = ownership.singletons["view.authors"]
    view_at = next(i for i in range(3) if d.member_id(ownership, i) == runner)
    gateway = (view_at + 1) % 3  # the SSE subscriber's gateway outlives the kill
    over_nats, over_sse = Follower("NATS"), Follower("SSE")
    where = parse_where(WHERE)
    async with d.http(gateway) as http, anyio.create_task_group() as tg:
        tg.start_soon(follow_nats, d.client.nc, d.prefix, where, over_nats)
        tg.start_soon(follow_sse, http, over_sse)
        await publish(30)

        # 1. a rebuild from the shell while posts keep coming
        argv = [sys.executable, "-m", "runtime.serve.cli", "replay", "authors"]
        data_dir = d.processes[0].argv[d.processes[0].argv.index("--data-dir") + 1]
        argv += ["--nats-url", nats_cluster.urls[0], "--prefix", d.prefix, "--data-dir", data_dir]
        async with anyio.create_task_group() as during:
            during.start_soon(publish, 20)
            done = await anyio.run_process(argv, check=False)
            assert done.returncode == 0, done.stderr.decode()[-2000:]

        async def caught_up() -> bool:
            return over_nats.posts() == truth() and over_sse.posts() == truth()

        await eventually(caught_up, 90, "both live results to match the posts after the rebuild")
        assert over_nats.kinds["removed"] or over_nats.resyncs, "the NATS subscriber saw the rebuild"
        assert over_sse.kinds["removed"] or over_sse.resyncs, "the SSE subscriber saw the rebuild"
        print(f"after the rebuild: NATS {over_nats.__dict__}, SSE {over_sse.__dict__}")

        # 2. the view's member SIGKILLed while posts keep coming; another member takes the view over
        async with anyio.create_task_group() as during:
            during.start_soon(publish, 30)
            status = await anyio.to_thread.run_sync(d.processes[view_at].signal, signal.SIGKILL)
            assert status == -signal.SIGKILL

        async def taken_over() -> bool:
            now = await d.ownership()
            return now.singletons.get("view.authors") not in (None, runner)

        await eventually(taken_over, 90, "another member to run the view")
        await publish(20)
        await eventually(caught_up, 120, "both live results to match the posts after the fail-over")
        rows = await d.client.request(f"{d.prefix}.view.authors.query", msgspec.json.encode(Query(limit=MAX_LIMIT)))
        view = {k: r for k, r in rows.result["rows"] if r["posts"] >= 2}
        assert over_nats.rows == view and over_sse.rows == view, "each follower holds the view's own rows"
        print(f"after the fail-over: NATS {over_nats.__dict__}, SSE {over_sse.__dict__}")
        tg.cancel_scope.cancel()
