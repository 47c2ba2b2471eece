"""Every credential and TLS option against a real nats-server: the right one gets in, a wrong one is
one clear error that names the credential and never shows the secret."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runtime.model.errors import ConfigError, MemoirError
from runtime.serve.service.client import Client
from runtime.wire.auth import NatsAuth
from runtime.wire.nats import connect
from runtime.wire.redact import redact_url

from .servers import make_ca, make_cert, nats_server, operator_mode, user_seed

pytestmark = pytest.mark.anyio

TOKEN = "tok-8f3a1c9e77d04b2a"
PASSWORD = "pw-5b1e0d6c9a2f4e83"


async def _refused(url: str, auth: NatsAuth) -> str:
    with anyio.fail_after(15), pytest.raises(MemoirError) as info:
        await connect(url, auth=auth, timeout=3)
    return str(info.value)


async def _works(url: str, auth: NatsAuth) -> None:
    nc = await connect(url, auth=auth, timeout=5)
    try:
        await nc.flush(timeout=2)  # a round trip: the server took the login
        assert nc.is_connected
    finally:
        await nc.close()


async def test_token_and_password_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "wrong").write_text("not-it\n")
    conf_token = 'listen: "127.0.0.1:{port}"\nauthorization { token: "' + TOKEN + '" }\n'
    conf_user = 'listen: "127.0.0.1:{port}"\nauthorization { user: app, password: "' + PASSWORD + '" }\n'
    async with nats_server(conf_token, tmp_path) as port:
        url = f"nats://127.0.0.1:{port}"
        await _works(url, NatsAuth.from_env({}, token_file=str(tmp_path / "token")))
        await _works(url, NatsAuth.from_env({"MEMOIR_NATS_TOKEN": TOKEN}))
        message = await _refused(url, NatsAuth.from_env({}, token_file=str(tmp_path / "wrong")))
        assert message == f"cannot connect to NATS at {url}: authentication failed (the server refused the token)"
        assert "authentication required" in await _refused(url, NatsAuth())
    async with nats_server(conf_user, tmp_path) as port:
        url = f"nats://127.0.0.1:{port}"
        await _works(url, NatsAuth.from_env({"MEMOIR_NATS_USER": "app"}, password_file=str(tmp_path / "password")))
        message = await _refused(url, NatsAuth(user="app", password="not-it"))
        assert "authentication failed (the server refused the user 'app' and password)" in message
        assert "not-it" not in message
        # the same secret in the URL: redacted in the message
        message = await _refused(f"nats://app:{PASSWORD}x@127.0.0.1:{port}", NatsAuth())
        assert PASSWORD not in message and f"nats://app:***@127.0.0.1:{port}" in message


async def test_nkey_seed_file(tmp_path: Path) -> None:
    seed, public = user_seed(tmp_path, "app")
    other, _ = user_seed(tmp_path, "other")
    conf = 'listen: "127.0.0.1:{port}"\nauthorization { users: [{ nkey: "' + public + '" }] }\n'
    async with nats_server(conf, tmp_path) as port:
        url = f"nats://127.0.0.1:{port}"
        await _works(url, NatsAuth.from_env({"MEMOIR_NATS_NKEY": str(seed)}))
        message = await _refused(url, NatsAuth(nkey_file=str(other)))
        assert message.endswith(f"authentication failed (the server refused the nkey seed file {other})")
        assert other.read_text().strip() not in message


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "holds no user JWT"),
        (
            "-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5In0.e30.x\n------END NATS USER JWT------\n",
            "no user nkey",
        ),
        (
            "-----BEGIN NATS USER JWT-----\neyJ0.e30.x\n------END NATS USER JWT------\n"
            "-----BEGIN USER NKEY SEED-----\nSUAGARBLED\n------END USER NKEY SEED------\n",
            "holds no valid NATS user nkey seed",
        ),
    ],
)
def test_a_garbled_creds_file_is_named(tmp_path: Path, content: str, complaint: str) -> None:
    creds = tmp_path / "app.creds"
    creds.write_text(content)
    with pytest.raises(ConfigError, match=complaint) as info:
        NatsAuth.from_env({}, creds_file=str(creds))
    assert str(creds) in str(info.value)


def test_bad_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the NATS credentials file .*missing\.creds: No such file"):
        NatsAuth.from_env({"MEMOIR_NATS_CREDS": str(tmp_path / "missing.creds")})
    with pytest.raises(ConfigError, match="give one NATS credential, not user/password and token"):
        NatsAuth.from_env({"MEMOIR_NATS_USER": "a", "MEMOIR_NATS_PASSWORD": "b", "MEMOIR_NATS_TOKEN": "c"})
    with pytest.raises(ConfigError, match="a NATS user needs its password"):
        NatsAuth.from_env({"MEMOIR_NATS_USER": "a"})
    with pytest.raises(ConfigError, match="needs its key"):
        NatsAuth.from_env({}, tls_cert=str(tmp_path / "c.pem"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"NATS token file .*empty is empty"):
        NatsAuth.from_env({}, token_file=str(tmp_path / "empty"))
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"cannot load the NATS TLS CA file .*ca\.pem"):
        NatsAuth.from_env({"MEMOIR_NATS_CA": str(tmp_path / "ca.pem")})


def test_a_credential_given_by_flag_replaces_the_environments(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    env = {"MEMOIR_NATS_USER": "app", "MEMOIR_NATS_PASSWORD": PASSWORD, "MEMOIR_NATS_CA": "/nonexistent/ca.pem"}
    auth = NatsAuth.from_env({**env, "MEMOIR_NATS_CA": ""}, token_file=str(tmp_path / "token"))
    assert auth == NatsAuth(token=TOKEN)
    mixed = NatsAuth.from_env({"MEMOIR_NATS_PASSWORD": PASSWORD, "MEMOIR_NATS_TOKEN": TOKEN}, user="app")
    assert mixed == NatsAuth(user="app", password=PASSWORD)  # the user by flag, its password from the environment
    (tmp_path / "password").write_text("from-file")
    env_pw = {"MEMOIR_NATS_USER": "app", "MEMOIR_NATS_PASSWORD": PASSWORD}
    assert NatsAuth.from_env(env_pw, password_file=str(tmp_path / "password")).password == "from-file"
    with pytest.raises(ConfigError, match=r"cannot load the NATS TLS CA file /nonexistent/ca\.pem"):
        NatsAuth.from_env(env, token_file=str(tmp_path / "token"))  # TLS settings still come from the environment


def test_secrets_are_never_shown() -> None:
    auth = NatsAuth(user="app", password=PASSWORD)
    assert PASSWORD not in repr(auth) and PASSWORD not in str(auth) and "password='***'" in repr(auth)
    assert TOKEN not in repr(NatsAuth(token=TOKEN))
    assert redact_url(f"postgresql://memoir:{PASSWORD}@db:5432/memoir?schema=m") == (
        "postgresql://memoir:***@db:5432/memoir?schema=m"
    )
    assert redact_url(f"nats://{TOKEN}@a:4222,tls://app:{PASSWORD}@b:4222") == "nats://***@a:4222,tls://app:***@b:4222"
    assert redact_url(f"postgresql://db/m?password={PASSWORD}&sslmode=require") == (
        "postgresql://db/m?password=***&sslmode=require"
    )


async def test_tls_with_a_private_ca_and_client_certificates(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "memoir-ca")
    other_ca = make_ca(tmp_path, "other-ca")
    server = make_cert(tmp_path, "nats", ca, san="DNS:nats.internal,IP:127.0.0.1")
    client = make_cert(tmp_path, "client", ca)
    stranger = make_cert(tmp_path, "stranger", other_ca)
    conf = (
        'listen: "127.0.0.1:{port}"\n'
        f'tls {{ cert_file: "{server[0]}", key_file: "{server[1]}", ca_file: "{ca[0]}", verify: true }}\n'
    )
    async with nats_server(conf, tmp_path) as port:
        url = f"tls://127.0.0.1:{port}"
        mine = NatsAuth.from_env(
            {"MEMOIR_NATS_CA": str(ca[0]), "MEMOIR_NATS_CERT": str(client[0]), "MEMOIR_NATS_KEY": str(client[1])}
        )
        await _works(url, mine)
        async with Client(url, auth=mine) as c:  # the command client takes the same value
            assert c.nc is not None and c.nc.is_connected
        # the certificate names nats.internal too: reached by address, checked by name
        named = NatsAuth(tls_ca=str(ca[0]), tls_cert=str(client[0]), tls_key=str(client[1]),
                         tls_server_name="nats.internal")  # fmt: skip
        await _works(url, named)
        wrong_ca = NatsAuth(tls_ca=str(other_ca[0]), tls_cert=str(client[0]), tls_key=str(client[1]))
        message = await _refused(url, wrong_ca)
        assert message.startswith(
            f"cannot connect to NATS at {url}: TLS handshake failed: the server's certificate is not trusted by"
            f" the CA in {other_ca[0]}"
        ), message
        wrong_name = NatsAuth(tls_ca=str(ca[0]), tls_cert=str(client[0]), tls_key=str(client[1]),
                              tls_server_name="elsewhere.internal")  # fmt: skip
        assert "TLS handshake failed" in await _refused(url, wrong_name)
        # the server verifies clients: none, or one another CA signed, is refused
        assert "cannot connect to NATS" in await _refused(url, NatsAuth(tls_ca=str(ca[0])))
        foreign = NatsAuth(tls_ca=str(ca[0]), tls_cert=str(stranger[0]), tls_key=str(stranger[1]))
        assert "cannot connect to NATS" in await _refused(url, foreign)


async def test_creds_file_in_operator_mode(tmp_path: Path) -> None:
    conf, creds = operator_mode(tmp_path)
    async with nats_server('listen: "127.0.0.1:{port}"\n' + conf, tmp_path) as port:
        url = f"nats://127.0.0.1:{port}"
        await _works(url, NatsAuth.from_env({"MEMOIR_NATS_CREDS": str(creds)}))
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        _, foreign = operator_mode(other_dir)  # well-formed, but issued by another operator
        message = await _refused(url, NatsAuth(creds_file=str(foreign)))
        assert message.endswith(f"authentication failed (the server refused the credentials file {foreign})")
