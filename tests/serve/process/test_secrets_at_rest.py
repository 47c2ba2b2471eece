"""No secret is at rest in the data dir's manifest: `memoir.json` records where a runtime's NATS and
databases are, never the passwords or tokens in their URLs; a client command gets the credential the
way `memoir run` got it (the environment or flags), and says so when it has none."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import pytest
from support.postgres import need_postgres
from support.process import MEMOIR, ROOT, RunningRuntime
from wire.servers import nats_server

pytestmark = pytest.mark.anyio

NATS_PASSWORD = "NatsPwSECRET7781"
PG_PASSWORD = "PgPwSECRET5512"  # the test server trusts local connections: any password gets in

CONF = """
listen: 127.0.0.1:{port}
jetstream { store_dir: "{store}" }
authorization { users: [ { user: memoir, password: $MEMOIR_TEST_NATS_PASSWORD } ] }
"""


def _cli(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MEMOIR, *args, "--data-dir", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


async def test_the_manifest_holds_no_password_and_clients_find_the_credential(tmp_path: Path) -> None:
    pg = need_postgres()
    with_password = pg.replace("postgresql://postgres@", f"postgresql://postgres:{PG_PASSWORD}@", 1)
    assert PG_PASSWORD in with_password, "the test needs a postgres URL of the form postgresql://postgres@host/db"
    schema = f"secrets_{os.getpid()}"
    async with nats_server(CONF, tmp_path, env={"MEMOIR_TEST_NATS_PASSWORD": NATS_PASSWORD}) as port:
        nats_url = f"nats://memoir:{NATS_PASSWORD}@127.0.0.1:{port}"
        data = tmp_path / "data"
        journal = f"{with_password}{'&' if '?' in with_password else '?'}schema={schema}"
        rt = RunningRuntime(data, "--nats-url", nats_url, "--journal", journal)
        await anyio.to_thread.run_sync(rt.start)
        try:
            at_rest = [p for p in data.rglob("*") if p.is_file() and not p.name.endswith(".log")]
            for path in at_rest:
                text = path.read_bytes()
                assert NATS_PASSWORD.encode() not in text and PG_PASSWORD.encode() not in text, path
            manifest = json.loads((data / "memoir.json").read_text())
            assert manifest["nats_url"] == f"nats://memoir@127.0.0.1:{port}"  # where, not the key

            args = (
                "send",
                "inventory",
                "S-1",
                "open",
                '{"units": 1, "last_in": "2022-01-01", "last_out": "2022-01-01"}',
            )
            bare = await anyio.to_thread.run_sync(lambda: _cli(data, *args))
            assert bare.returncode != 0
            assert "MEMOIR_NATS_URL" in bare.stderr and NATS_PASSWORD not in bare.stderr, bare.stderr

            given = await anyio.to_thread.run_sync(lambda: _cli(data, *args, env={"MEMOIR_NATS_URL": nats_url}))
            assert given.returncode == 0, given.stderr
        finally:
            assert await anyio.to_thread.run_sync(rt.stop) == 0
