"""`memoir replay VIEW` waits for the runtime's answer however short `--timeout` is: the runtime
answers once it has stopped the view and reset it, which waits for the batch the view is applying,
and bounds that wait itself (`admin.REBUILD_SECONDS`). A CI run saw a replay time out after the
default 5 s on a loaded three-member cluster while the runtime went on to rebuild the view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.gated_view_app import GATE
from support.process import MEMOIR, ROOT, RunningRuntime
from support.waiting import eventually_sync

HELD = 6.0  # seconds the view is held mid-batch after the replay is asked: past --timeout 3 (which also bounds
# the CLI's connect, so not shorter: a loaded machine may take a second to connect)


def test_replay_waits_past_the_timeout_for_the_view_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv(GATE, str(gate))
    rt = RunningRuntime(tmp_path / "data", "tests.support.gated_view_app:app").start()
    try:
        sent = rt.cli("send", "post", "p0", "publish", json.dumps({"author": "ann", "text": "x"}))
        assert sent.returncode == 0, sent.stderr
        eventually_sync(lambda: gate.with_name("gate.entered").exists(), what="the view to hold its first batch")
        with subprocess.Popen(
            [*MEMOIR, "replay", "authors", "--timeout", "3", "--data-dir", str(rt.data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ) as replay:
            time.sleep(HELD)
            asked_too_early = replay.poll()
            gate.unlink()
            out, err = replay.communicate(timeout=60)
        assert asked_too_early is None, f"the replay gave up while the view was held: {err}"
        assert replay.returncode == 0, err
        assert out.strip() == "view authors is being rebuilt from the start of its streams"

        def counted() -> bool:
            got = rt.cli("query", "authors", "ann", "--json")
            return got.returncode == 0 and json.loads(got.stdout)["posts"] == 1

        eventually_sync(counted, what="the rebuilt view to count the post once")
    finally:
        gate.unlink(missing_ok=True)
        assert rt.stop(signal.SIGTERM) == 0, "a graceful shutdown exits 0"
