"""`memoir deadletters list|show|replay|purge` against a real `memoir run` whose consumer parks
poison posts until it is fixed (tests/support/deadletter_app.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from support.deadletter_app import FIX_FILE
from support.process import RunningRuntime
from support.waiting import eventually_sync


def test_list_show_replay_purge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix = tmp_path / "fixed"
    monkeypatch.setenv(FIX_FILE, str(fix))
    rt = RunningRuntime(tmp_path / "data", "tests.support.deadletter_app:app").start()
    try:

        def count(who: str) -> int:
            got = rt.cli("send", "profile", who, "get", "--json")
            assert got.returncode == 0, got.stderr
            return int(json.loads(got.stdout)["result"]["posts"])

        for post, text in (("bad-1", "poison"), ("bad-2", "poison"), ("ok-1", "fine")):
            sent = rt.cli("send", "post", post, "publish", json.dumps({"author": "ann", "text": text}))
            assert sent.returncode == 0, sent.stderr

        def listed() -> list[dict[str, object]]:
            out = rt.cli("deadletters", "list", "tally", "--json")
            assert out.returncode == 0, out.stderr
            return [json.loads(line) for line in out.stdout.splitlines()]

        eventually_sync(lambda: len(listed()) == 2, what="two poison posts parked")
        eventually_sync(lambda: count("audit") == 1, what="the fine post counted")
        first, second = (int(str(p["seq"])) for p in listed())
        human = rt.cli("deadletters", "list", "tally")
        assert human.stdout.splitlines()[0].split() == ["SEQ", "EVENT", "NAME", "PARKED_AT", "ERROR"]
        assert "post/bad-1/1" in human.stdout and "cannot handle bad-1 yet" in human.stdout

        shown = json.loads(rt.cli("deadletters", "show", "tally", str(first), "--json").stdout)
        assert shown["event"] == "post/bad-1/1" and shown["payload"] == {"author": "ann", "text": "poison"}

        failed = rt.cli("deadletters", "replay", "tally", str(first))
        assert failed.returncode == 1 and f"still parked: {first}: RuntimeError" in failed.stdout

        fix.touch()
        replayed = rt.cli("deadletters", "replay", "tally", "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.strip() == f"replayed: {first}, {second}"
        assert (count("ann"), count("audit")) == (3, 3)  # each post counted once for ann, once for audit
        assert listed() == []
        again = rt.cli("deadletters", "show", "tally", str(first))
        assert again.returncode == 1 and "not_found" in again.stderr

        purged = rt.cli("deadletters", "purge", "tally", "--all")
        assert purged.returncode == 0 and purged.stdout.strip() == "purged 0 parked event(s) of tally"
        usage = rt.cli("deadletters", "replay", "tally")
        assert usage.returncode != 0 and "--all" in usage.stderr
        unknown = rt.cli("deadletters", "list", "nope")
        assert unknown.returncode == 1 and "unknown_consumer" in unknown.stderr
    finally:
        assert rt.stop(signal.SIGTERM) == 0, "a graceful shutdown exits 0"
