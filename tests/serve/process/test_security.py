"""`memoir run` as a real process: owner-only files, an embedded server that wants the data dir's
key, secrets that never reach the output, and bad credentials refused in one line with exit 2."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest
from support.process import MEMOIR, ROOT, RunningRuntime
from wire.servers import make_ca, make_cert, nats_server, user_seed

from runtime.model.errors import MemoirError
from runtime.wire.auth import NatsAuth
from runtime.wire.nats import connect

pytestmark = pytest.mark.anyio

SECRET = "Pw-6d1f0c2b9e8a4d57"


def _memoir(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MEMOIR, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as page:
        return str(page.read().decode())


async def test_the_data_dir_is_owner_only_and_the_embedded_server_admits_only_its_key(
    runtime_process: RunningRuntime, tmp_path: Path
) -> None:
    rt = runtime_process
    sent = rt.cli("send", "inventory", "XYZ-1", "receive", '{"units": 5, "on": "2022-03-01"}')
    assert sent.returncode == 0, sent.stderr
    assert rt.cli("query", "posts_by_author", "nobody").returncode == 1  # a view store read: the CLI gets in
    found = {p.relative_to(rt.data).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [rt.data, *rt.data.rglob("*")]}
    for name in ("journal.db", "journal.db-wal", "views.db", "nats.nk", "nats.url", "nats", "nats/jetstream"):
        assert name in found, f"{name} missing from {sorted(found)}"
    loose = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not loose, f"readable by others: {loose}"
    assert found["."] == 0o700 and found["journal.db"] == 0o600 and found["nats.nk"] == 0o600

    url = rt.nats_url
    assert "@" not in url  # the URL file carries no secret
    seed = (rt.data / "nats.nk").read_text().strip()
    server_conf = (rt.data / "nats" / "nats-server.conf").read_text()
    assert seed not in server_conf and 'listen: "127.0.0.1:' in server_conf  # a public key, on loopback only
    with anyio.fail_after(20):
        with pytest.raises(MemoirError, match="authentication required"):
            await connect(url, timeout=3)
        other, _ = user_seed(tmp_path, "other")
        with pytest.raises(MemoirError, match="authentication failed"):
            await connect(url, auth=NatsAuth(nkey_file=str(other)), timeout=3)
    assert seed not in rt.banner


async def test_secrets_never_reach_the_serving_line_logs_metrics_or_errors(tmp_path: Path) -> None:
    conf = (
        'listen: "127.0.0.1:{port}"\njetstream { store_dir: "{store}" }\n'
        'authorization { user: app, password: "' + SECRET + '" }\n'
    )
    async with nats_server(conf, tmp_path) as port:
        with_secret = f"nats://app:{SECRET}@127.0.0.1:{port}"
        rt = RunningRuntime(
            tmp_path / "data", "--nats-url", with_secret, "--journal", with_secret, "--metrics-port", "0"
        ).start()
        try:
            assert SECRET not in rt.banner and f"nats://app:***@127.0.0.1:{port}" in rt.banner
            metrics_url = rt.banner.split("metrics ", 1)[1].split(";")[0].split()[0]
            # the same server, the password from the environment, the user by flag
            env = {"MEMOIR_NATS_PASSWORD": SECRET}
            plain = ["--nats-url", f"nats://127.0.0.1:{port}", "--nats-user", "app", "--data-dir", str(rt.data)]
            sent = _memoir("send", "inventory", "A-1", "receive", '{"units": 2, "on": "2022-03-01"}', *plain, env=env)
            assert sent.returncode == 0, sent.stderr
            journal = ["--journal", f"nats://127.0.0.1:{port}", "--json"]
            events = _memoir("events", "inventory", "A-1", *plain, *journal, env=env)
            assert events.returncode == 0 and json.loads(events.stdout)["event"] == "Received", events.stderr
            wrong = _memoir("send", "inventory", "A-1", "receive", "{}", *plain, env={"MEMOIR_NATS_PASSWORD": "nope"})
            assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
            assert "authentication failed (the server refused the user 'app' and password)" in wrong.stderr
            in_url = _memoir("send", "inventory", "A-1", "get", "--nats-url", f"nats://app:{SECRET}x@127.0.0.1:{port}")
            assert in_url.returncode == 2 and SECRET not in in_url.stderr, in_url.stderr
            page = await anyio.to_thread.run_sync(_get, metrics_url)
            assert "memoir_" in page and SECRET not in page
        finally:
            assert rt.stop() == 0
        log = (tmp_path / "data.log").read_text()
        assert "stopped" in log and SECRET not in log


async def test_bad_credentials_and_a_wrong_ca_are_one_line_exit_2_nothing_stored(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.creds"
    garbled.write_text("-----BEGIN NATS USER JWT-----\nnot a jwt\n")
    data = tmp_path / "data"
    run = _memoir("run", "--data-dir", str(data), "--nats-url", "nats://127.0.0.1:1", "--nats-creds", str(garbled))
    assert run.returncode == 2, run.stderr
    assert run.stderr == (
        f"memoir: config: NATS credentials file {garbled} holds no user JWT (expected a .creds file as nsc writes it)\n"
    )
    assert not data.exists()  # refused before anything was created

    ca, other_ca = make_ca(tmp_path, "ca"), make_ca(tmp_path, "other-ca")
    cert = make_cert(tmp_path, "nats", ca)
    conf = (
        'listen: "127.0.0.1:{port}"\njetstream { store_dir: "{store}" }\n'
        f'tls {{ cert_file: "{cert[0]}", key_file: "{cert[1]}" }}\n'
    )
    async with nats_server(conf, tmp_path) as port:
        url = f"tls://127.0.0.1:{port}"
        run = _memoir(
            "run", "--data-dir", str(data), "--nats-url", url, "--journal", url, "--nats-ca", str(other_ca[0])
        )
        assert run.returncode == 2, run.stderr
        assert re.match(
            rf"memoir: \w+: cannot connect to NATS at {url}: TLS handshake failed: the server's certificate is not"
            rf" trusted by the CA in {re.escape(str(other_ca[0]))}: ",
            run.stderr,
        ), run.stderr
        assert run.stderr.count("\n") == 1
        sent = _memoir("send", "inventory", "A", "get", "--nats-url", url, "--nats-ca", str(ca[0]))
        assert sent.returncode == 2 and sent.stderr.count("\n") == 1, sent.stderr  # no TLS noise on stderr
        assert "no Memoir runtime is serving" in sent.stderr  # TLS with the right CA gets through
        nc = await connect(url, auth=NatsAuth(tls_ca=str(ca[0])))
        try:
            assert await nc.jetstream().streams_info() == []  # nothing stored
        finally:
            await nc.close()


def test_memoir_run_help_lists_the_credential_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runtime.serve.cli", "send", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    for flag in ("--nats-creds", "--nats-nkey", "--nats-user", "--nats-password-file", "--nats-token-file",
                 "--nats-ca", "--nats-cert", "--nats-key", "--nats-server-name"):  # fmt: skip
        assert flag in out
    assert "--nats-password " not in out and "--nats-token " not in out  # no secret on the command line


@pytest.mark.parametrize(
    "journal",
    [
        f"postgresql://memoir:{SECRET}@127.0.0.1:1/test",
        f"bogus://memoir:{SECRET}@host/x",
    ],
)
def test_a_journal_url_password_is_redacted_in_errors(journal: str, tmp_path: Path) -> None:
    out = _memoir("events", "inventory", "x", "--data-dir", str(tmp_path / "d"), "--journal", journal)
    assert out.returncode == 2 and out.stderr.startswith("memoir: ") and out.stderr.count("\n") == 1, out.stderr
    assert SECRET not in out.stderr + out.stdout
