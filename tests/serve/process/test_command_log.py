"""`memoir run --log-commands`: one line per command at level `command`, whatever `--log-level` says;
none without the flag."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.process import RunningRuntime
from support.waiting import eventually

from runtime.serve.service.embedded_nats import free_port

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


async def test_http_commands_served_in_process_are_logged_and_counted(tmp_path: Path) -> None:
    """An HTTP command for an entity this process owns takes the NATS door's own path, in-process: its
    command log line and its metrics are the ones a NATS command gets."""
    http_port, metrics_port = free_port(), free_port()
    args = ("--log-commands", "--http-port", str(http_port), "--metrics-port", str(metrics_port))
    rt = RunningRuntime(tmp_path / "data", *args).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", headers=rt.http_auth, timeout=10) as h:
            headers = {"Idempotency-Key": "h-1", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
            ok = await h.post("/post/p9/publish", json={"author": "ann", "text": "hi"}, headers=headers)
            assert ok.status_code == 200, ok.text
            bad = await h.post("/post/p9/publish", json={"author": "ann"})
            assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid")
        async with httpx.AsyncClient(timeout=10) as plain:
            metrics = (await plain.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        assert rt.stop(signal.SIGTERM) == 0
    for outcome in ("ok", "invalid"):
        assert f'memoir_commands_total{{command="publish",entity_type="post",outcome="{outcome}"}} 1.0' in metrics

    async def logged() -> bool:
        return len(command_lines(tmp_path / "data.log")) == 2

    await eventually(logged, 10, "two command lines")
    ok_line, bad_line = command_lines(tmp_path / "data.log")
    assert (ok_line["entity_id"], ok_line["command_id"], ok_line["outcome"], ok_line["seq"]) == ("p9", "h-1", "ok", 1)
    assert ok_line["trace_id"] == TRACE
    assert (bad_line["outcome"], bad_line["seq"]) == ("invalid", None)
