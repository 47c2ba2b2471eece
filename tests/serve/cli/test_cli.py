"""The README's session: `memoir run` in one terminal, `memoir send` / `events` / `state` in another."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.process import RunningRuntime

OPEN = '{"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}'


def test_send_events_state_query_as_the_readme_shows(runtime_process: RunningRuntime) -> None:
    rt = runtime_process
    assert "inventory" in rt.banner and "nats://127.0.0.1:" in rt.banner and "journal sqlite:///" in rt.banner

    sent = rt.cli("send", "inventory", "XYZ-1", "open", OPEN)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines() == ["SEQ  RESULT", "1    100"]
    assert rt.cli("send", "inventory", "XYZ-1", "receive", '{"units": 100, "on": "2022-03-01"}').returncode == 0

    events = rt.cli("events", "inventory", "XYZ-1")
    assert events.returncode == 0
    header, *lines = events.stdout.strip().splitlines()
    assert header.split() == ["SEQ", "RECORDED", "PRINCIPAL", "EVENT", "PAYLOAD"]
    assert len(lines) == 2 and "Opened" in lines[0] and '"units":100' in lines[0] and "Received" in lines[1]

    as_json = [json.loads(x) for x in rt.cli("events", "inventory", "XYZ-1", "--json").stdout.splitlines()]
    assert [e["event"] for e in as_json] == ["Opened", "Received"]
    assert as_json[1]["payload"] == {"units": 100, "on": "2022-03-01"}

    then = json.loads(rt.cli("state", "inventory", "XYZ-1", "--seq", "1", "--json").stdout)
    assert then == {
        "seq": 1,
        "state": {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01", "opened": True},
    }
    now = json.loads(rt.cli("state", "inventory", "XYZ-1", "--json").stdout)
    assert now["seq"] == 2 and now["state"]["units"] == 200

    rejected = rt.cli("send", "inventory", "XYZ-1", "sell", '{"units": 1000, "on": "2022-03-02"}')
    assert rejected.returncode == 1 and rejected.stderr.startswith("memoir: rejected: cannot sell 1000 units")
    assert rejected.stdout == ""

    assert rt.cli("send", "post", "p1", "publish", '{"author": "ann", "text": "hi"}').returncode == 0
    rows = None
    for _ in range(100):
        q = rt.cli("query", "posts_by_author", "ann", "--json")
        if q.returncode == 0:
            rows = json.loads(q.stdout)
            break
    assert rows == {"author": "ann", "posts": 1, "latest": "p1"}
    scanned = rt.cli("query", "posts_by_author")
    assert scanned.stdout.splitlines() == ["KEY  AUTHOR  POSTS  LATEST", "ann  ann     1      p1"]
    as_lines = [json.loads(x) for x in rt.cli("query", "posts_by_author", "--json").stdout.splitlines()]
    assert as_lines == [{"key": "ann", "row": {"author": "ann", "posts": 1, "latest": "p1"}}]

    exported = [json.loads(x) for x in rt.cli("export").stdout.splitlines()]
    assert [e["position"] for e in exported] == list(range(1, len(exported) + 1))

    assert rt.stop(signal.SIGTERM) == 0, "a graceful shutdown exits 0"
    # Nothing was lost by the shutdown: the history is all there, read straight from the journal.
    assert len(rt.cli("events", "inventory", "XYZ-1").stdout.strip().splitlines()) == 1 + 2  # the header, two events


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["state", "inventory", "X", "--at", "yesterday"], "is not an ISO 8601 time"),
        (["run", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["run", "--prefix", "bad prefix"], "subject prefix 'bad prefix'"),
        (["run", "--stream-replicas", "0"], "stream_replicas must be >= 1"),
        (["run", "--cluster"], "a cluster needs a journal every member shares: postgresql:// or nats://"),
        (["run", "--cluster", "--journal", "memory://"], "not memory://"),
        (["run", "--cluster", "--shards", "0"], "shard"),
        (["run", "--cluster", "--lease-ttl", "-1"], "lease ttl must be positive"),
        (["query", "posts_by_author", "--nats-url", "nats://127.0.0.1:1"], "cannot connect to NATS"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(runtime_process: RunningRuntime, args: list[str], message: str) -> None:
    result = runtime_process.cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_stream_settings_reach_the_streams(tmp_path: Path) -> None:
    rt = RunningRuntime(tmp_path / "data", "--stream-max-age", "3600", "--stream-duplicate-window", "30").start()
    try:

        async def config() -> Any:
            nc = await rt.connect()
            try:
                return (await nc.jetstream().stream_info("MEMOIR_EVENTS_INVENTORY")).config
            finally:
                await nc.close()

        cfg = anyio.run(config)
        assert (cfg.max_age, cfg.duplicate_window, cfg.num_replicas) == (3600, 30, 1)
    finally:
        assert rt.stop() == 0
