"""`memoir run` verifying tokens, `memoir send --token-file` / MEMOIR_TOKEN, and `memoir events` saying who."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from support.process import MEMOIR, ROOT, RunningRuntime

SECRET = "process-test-secret-0123456789abcdef"


def token(sub: str, **more: object) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "aud": "shop", "iat": now, "exp": now + 600, **more}, SECRET, algorithm="HS256")


def test_send_with_a_token_and_see_who_did_what(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOIR_JWT_SECRET", SECRET)  # the secret by environment, never a flag
    monkeypatch.setenv("MEMOIR_JWT_AUDIENCE", "shop")
    monkeypatch.delenv("MEMOIR_TOKEN", raising=False)
    rt = RunningRuntime(tmp_path / "data").start()
    try:
        assert "tokens HS256; aud shop" in rt.banner and SECRET not in rt.banner
        (tmp_path / "ann.jwt").write_text(token("ann") + "\n")
        opened = rt.cli("send", "inventory", "X", "open", '{"units": 5}', "--token-file", str(tmp_path / "ann.jwt"))
        assert opened.returncode == 0, opened.stdout + opened.stderr

        monkeypatch.setenv("MEMOIR_TOKEN", token("bob"))
        received = rt.cli("send", "inventory", "X", "receive", '{"units": 2, "on": "2026-11-23"}')
        assert received.returncode == 0, received.stdout + received.stderr

        expired = jwt.encode({"sub": "eve", "aud": "shop", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")
        refused = rt.cli("send", "inventory", "X", "sell", '{"units": 1, "on": "2026-11-23"}', "--token", expired)
        assert refused.returncode == 1
        assert refused.stderr.strip() == "memoir: unauthorized: bad bearer token: expired"
        assert expired not in refused.stderr + refused.stdout

        missing = rt.cli("send", "inventory", "X", "sell", "{}", "--token-file", str(tmp_path / "none.jwt"))
        assert missing.returncode == 2
        assert missing.stderr.strip() == (
            f"memoir: config: cannot read the token file '{tmp_path / 'none.jwt'}': No such file or directory"
        )

        events = rt.cli("events", "inventory", "X")
        header, *lines = events.stdout.strip().splitlines()
        assert header.split()[2:4] == ["PRINCIPAL", "EVENT"] and len(lines) == 2, events.stdout
        assert lines[0].split()[2:4] == ["ann", "Opened"] and lines[1].split()[2:4] == ["bob", "Received"]
        as_json = [json.loads(x) for x in rt.cli("events", "inventory", "X", "--json").stdout.splitlines()]
        assert [e["principal"] for e in as_json] == ["ann", "bob"]
        exported = [json.loads(x) for x in rt.cli("export").stdout.splitlines()]
        assert [e["principal"] for e in exported] == ["ann", "bob"]
        assert rt.stop(signal.SIGTERM) == 0
    finally:
        if rt.proc is not None:
            rt.proc.kill()
            rt.proc.wait()
            rt.close()


def test_a_bad_key_configuration_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMOIR_JWT_SECRET": "too-short"}
    done = subprocess.run(
        [*MEMOIR, "run", "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "memoir: config: the JWT HMAC secret is 9 bytes; it must be at least 32"
    assert "too-short" not in done.stderr
