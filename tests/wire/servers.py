"""Real nats-server processes with real credentials and certificates, for the security tests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import nkeys  # type: ignore[import-untyped]
import pytest
from support.ci import in_ci

from runtime.serve.service.embedded_nats import find_binary, free_port, stop_process


@contextlib.asynccontextmanager
async def nats_server(conf: str, directory: Path, env: Mapping[str, str] | None = None) -> AsyncIterator[int]:
    """nats-server with `conf` (its `{port}` and `{store}` filled in) on a free port; yields the port."""
    port = free_port()
    path = directory / f"nats-{port}.conf"
    path.write_text(conf.replace("{port}", str(port)).replace("{store}", (directory / f"store-{port}").as_posix()))
    log = directory / f"nats-{port}.log"
    with open(log, "wb") as out:
        proc = await anyio.open_process(
            [find_binary(), "-c", str(path)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        with anyio.fail_after(15):
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"nats-server exited: {log.read_text()[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    await anyio.sleep(0.05)
        yield port
    finally:
        await stop_process(proc)


def need_openssl() -> None:
    if shutil.which("openssl") is None:
        if in_ci():
            pytest.fail("openssl not found (CI=true: the TLS tests must run)")
        pytest.skip("openssl not found: cannot make certificates")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway CA: (certificate, key)."""
    need_openssl()
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-days", "1", "-subj", f"/CN={name}")  # fmt: skip
    return cert, key


def make_cert(directory: Path, name: str, ca: tuple[Path, Path], *, san: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    """A certificate for `san` signed by `ca`: (certificate, key)."""
    cert, key, csr = directory / f"{name}.pem", directory / f"{name}-key.pem", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return cert, key


def user_seed(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh user nkey: (seed file, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = directory / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    return path, nkeys.from_seed(bytearray(seed)).public_key.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _keypair(prefix: int) -> Any:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2): ed25519-nkey signed claims, as nsc issues them."""
    claims = {"jti": secrets.token_hex(16).upper(), "iat": int(time.time()), "iss": issuer.public_key.decode(),
              "name": name, "sub": subject, "nats": {**nats, "version": 2}}  # fmt: skip
    signing = f"{_b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(issuer.sign(signing.encode()))}"


def operator_mode(directory: Path) -> tuple[str, Path]:
    """Decentralized auth as nsc sets it up: (the server's config lines, a user's .creds file)."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed_bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    user = nkeys.from_seed(bytearray(user_seed_bytes))
    unlimited = {"subs": -1, "data": -1, "payload": -1}
    op_jwt = _jwt(operator, operator.public_key.decode(), "memoir-test", {"type": "operator"})
    acct = account.public_key.decode()
    acct_jwt = _jwt(operator, acct, "APP", {"type": "account", "limits": {
        **unlimited, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}})  # fmt: skip
    user_jwt = _jwt(account, user.public_key.decode(), "app", {"type": "user", "pub": {}, "sub": {}, **unlimited})
    creds = directory / "app.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed_bytes.decode()}\n------END USER NKEY SEED------\n"
    )
    conf = f'operator: "{op_jwt}"\nresolver: MEMORY\nresolver_preload: {{\n  {acct}: "{acct_jwt}"\n}}\n'
    return conf, creds
