"""`memoir run --log-commands`: one line per command at level `command`, whatever `--log-level` says;
none without the flag."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from support.process import RunningRuntime

pytestmark = pytest.mark.anyio
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def command_lines(log: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("level") == "command"]


async def send_two(rt: RunningRuntime) -> None:
    nc = await rt.connect()
    try:
        headers = {"Memoir-Command-Id": "c-1", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        ok = await nc.request("memoir.cmd.post.p1.publish", b'{"author":"ann","text":"hi"}', 10, headers=headers)
        assert json.loads(ok.data)["ok"]
        bad = await nc.request("memoir.cmd.post.p1.publish", b'{"author":"ann"}', 10)
        assert not json.loads(bad.data)["ok"]
    finally:
        await nc.close()


async def test_a_line_per_command_only_with_the_flag(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = RunningRuntime(data, "--log-commands", "--log-level", "error").start()
    try:
        await send_two(rt)
    finally:
        assert rt.stop(signal.SIGTERM) == 0
    ok, bad = command_lines(tmp_path / "data.log")
    assert ok["event"] == "command" and ok["timestamp"]
    assert {k: ok[k] for k in ("entity_type", "entity_id", "command", "command_id", "outcome", "seq")} == {
        "entity_type": "post",
        "entity_id": "p1",
        "command": "publish",
        "command_id": "c-1",
        "outcome": "ok",
        "seq": 1,
    }
    assert ok["trace_id"] == TRACE and ok["ms"] > 0
    assert (bad["outcome"], bad["seq"], bad["command_id"], bad["trace_id"]) == ("invalid", None, None, None)

    (tmp_path / "data.log").unlink()
    rt = RunningRuntime(data).start()  # the default: off
    try:
        await send_two(rt)
    finally:
        assert rt.stop(signal.SIGTERM) == 0
    assert command_lines(tmp_path / "data.log") == []
