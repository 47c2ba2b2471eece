"""The files in deploy/ stay true to the code: every setting is in the env file, and the NATS
configuration for the JetStream journal is valid and serves it."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
import pytest
from support.deploy import DEPLOY, env_file

from runtime import Envelope
from runtime.journal.jetstream import JetStreamJournal
from runtime.serve.process.settings import Settings
from runtime.serve.service.embedded_nats import find_binary, free_port
from runtime.wire.auth import ENV as NATS_AUTH_ENV
from runtime.wire.auth import NatsAuth


def test_the_env_file_names_every_setting_and_nothing_else() -> None:
    expected = {f"MEMOIR_{f.name.upper()}" for f in msgspec.structs.fields(Settings)} | set(NATS_AUTH_ENV)
    assert set(env_file()) == expected


def test_the_env_file_is_accepted_as_it_stands() -> None:
    settings = Settings.from_env(env_file())
    assert settings.data_dir == "/var/lib/memoir"
    assert settings.metrics_port == 9464
    assert settings.nats_url is None and settings.journal_url is None  # empty: the defaults
    assert NatsAuth.from_env(env_file()) == NatsAuth()  # no credential: the embedded server's own key


@pytest.mark.anyio
async def test_the_nats_config_is_valid_and_serves_the_jetstream_journal(tmp_path: Path) -> None:
    conf = DEPLOY / "nats-server.conf"
    assert "sync_interval: always" in conf.read_text()
    passwords = {f"NATS_{role}_PASSWORD": f"pw-{role}" for role in ("RUNTIME", "CLIENT", "READER")}
    checked = await anyio.run_process([find_binary(), "-t", "-c", str(conf)], check=False, env=passwords)
    assert checked.returncode == 0, checked.stderr.decode()
    port = free_port()
    # the file as shipped, with only where it listens and stores moved to this test's own
    text = conf.read_text()
    assert "store_dir: /var/lib/nats" in text
    local = tmp_path / "nats.conf"
    local.write_text(text.replace("store_dir: /var/lib/nats", f'store_dir: "{tmp_path / "js"}"'))
    (tmp_path / "nats-accounts.conf").write_text((DEPLOY / "nats-accounts.conf").read_text())
    args = [find_binary(), "-c", str(local), "-a", "127.0.0.1", "-p", str(port)]
    proc = await anyio.open_process(args, env=passwords)
    runtime = NatsAuth(user="runtime", password="pw-RUNTIME", inbox_prefix="_INBOX_memoir")
    try:
        async with JetStreamJournal(f"nats://127.0.0.1:{port}", auth=runtime) as journal:
            env = Envelope(
                entity_type="thing",
                entity_id="a",
                seq=1,
                name="Happened",
                version=1,
                payload=b"{}",
                recorded_at=time.time_ns(),
            )
            assert [e.position for e in await journal.append([env], 0)] == [1]
    finally:
        proc.terminate()
        await proc.wait()
