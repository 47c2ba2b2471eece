"""A NATS connection that cannot be made says why, against real nats-server processes configured
each way (nothing listening, a login required, TLS required, a server that never answers), and
never shows the URL's password or token."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from support.ci import in_ci
from support.waiting import eventually

from runtime import MemoirError
from runtime.serve.service.embedded_nats import find_binary, free_port
from runtime.wire.nats import connect, redact

pytestmark = pytest.mark.anyio


async def _server(conf: Path, port: int) -> AsyncIterator[int]:
    proc = await anyio.open_process(
        [find_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        await eventually(lambda: _listening(port), 10, f"nats-server listening on {port}")
        yield port
    finally:
        proc.terminate()
        with anyio.move_on_after(5, shield=True):
            await proc.wait()
        await proc.aclose()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
async def auth_server(tmp_path: Path) -> AsyncIterator[int]:
    port = free_port()
    conf = tmp_path / "auth.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nauthorization {{ user: alice, password: "s3cret-pw" }}\n')
    async for p in _server(conf, port):
        yield p


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        if in_ci():
            pytest.fail("openssl not found (CI=true: the TLS test must run)")
        pytest.skip("openssl not found: cannot make a certificate for the TLS server")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[int]:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\ntls {{ cert_file: "{cert}", key_file: "{key}" }}\n')
    async for p in _server(conf, port):
        yield p


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung server, a firewall's tarpit)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


async def _error(url: str, timeout: float = 3.0) -> str:
    with anyio.fail_after(timeout + 5), pytest.raises(MemoirError) as info:
        await connect(url, timeout=timeout)
    return str(info.value)


async def test_refused() -> None:
    port = free_port()
    assert await _error(f"nats://127.0.0.1:{port}", timeout=1.0) == (
        f"cannot connect to NATS at nats://127.0.0.1:{port}: connection refused (nothing listens there)"
    )


async def test_wrong_password_is_an_authentication_failure_and_is_redacted(auth_server: int) -> None:
    with anyio.fail_after(5):  # well inside the 10 s connect timeout: a refused login is not waited out
        message = await _error(f"nats://alice:wrong-pw@127.0.0.1:{auth_server}", timeout=10.0)
    assert message.startswith(
        f"cannot connect to NATS at nats://alice:***@127.0.0.1:{auth_server}: authentication failed"
    )
    assert "wrong-pw" not in message


async def test_wrong_token_is_redacted(auth_server: int) -> None:
    message = await _error(f"nats://my-secret-token@127.0.0.1:{auth_server}")
    assert f"nats://***@127.0.0.1:{auth_server}: authentication failed" in message
    assert "my-secret-token" not in message


async def test_no_credentials_where_a_login_is_required(auth_server: int) -> None:
    assert "authentication required" in await _error(f"nats://127.0.0.1:{auth_server}")


async def test_the_right_password_connects(auth_server: int) -> None:
    nc = await connect(f"nats://alice:s3cret-pw@127.0.0.1:{auth_server}", timeout=5.0)
    await nc.close()


async def test_tls_required_by_the_server(tls_server: int) -> None:
    message = await _error(f"nats://127.0.0.1:{tls_server}")
    assert message.startswith(f"cannot connect to NATS at nats://127.0.0.1:{tls_server}: TLS required")
    message = await _error(f"tls://u:pw-in-url@127.0.0.1:{tls_server}")
    assert "TLS handshake failed" in message and "certificate" in message and "pw-in-url" not in message


async def test_a_server_that_never_answers_times_out(silent_port: int) -> None:
    assert await _error(f"nats://127.0.0.1:{silent_port}", timeout=1.0) == (
        f"cannot connect to NATS at nats://127.0.0.1:{silent_port}: timed out (no NATS server answered within 1 s)"
    )


def test_redact() -> None:
    assert (
        redact("nats://u:p@h:4222,nats://tok@h2:4222,nats://h3") == "nats://u:***@h:4222,nats://***@h2:4222,nats://h3"
    )
