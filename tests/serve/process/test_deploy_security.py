"""The NATS users in deploy/ agree everywhere: the same roles and permissions in nats-accounts.conf
and the Helm values, the runtime logging in as `runtime` with its own inboxes in compose and
Kubernetes, and no password written into any file. (tests/serve/process/test_nats_roles.py runs them.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from runtime.wire.auth import NatsAuth

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
ROLES = ("runtime", "client", "reader")


def _conf_permissions() -> dict[str, tuple[list[str], list[str]]]:
    """user -> (publish allow, subscribe allow), read from nats-accounts.conf."""
    text = (DEPLOY / "nats-accounts.conf").read_text()
    out = {}
    for user in ROLES:
        block = text.split(f"user: {user}\n", 1)[1]
        pub, sub = (
            re.findall(r'"([^"]+)"', re.search(rf"{kind}:\s*\{{\s*allow:\s*\[(.*?)\]", block, re.S).group(1))  # type: ignore[union-attr]
            for kind in ("publish", "subscribe")
        )
        out[user] = (pub, sub)
    return out


def test_the_helm_values_have_the_same_users_as_nats_accounts_conf() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "nats-values.yaml").read_text())
    users = values["config"]["merge"]["accounts"]["MEMOIR"]["users"]
    helm = {u["user"]: (u["permissions"]["publish"]["allow"], u["permissions"]["subscribe"]["allow"]) for u in users}
    assert helm == _conf_permissions()
    for u in users:
        assert u["password"] == f"<< $NATS_{u['user'].upper()}_PASSWORD >>"  # from the environment, not the file
    env = values["container"]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values()} == set(ROLES)


def test_least_privilege_as_written() -> None:
    perms = _conf_permissions()
    client_pub, client_sub = perms["client"]
    assert client_pub == ["memoir.cmd.>", "memoir.view.>"] and client_sub == ["_INBOX.>"]
    reader_pub, reader_sub = perms["reader"]
    assert not any(s.startswith("memoir.") for s in reader_pub) and reader_sub == ["_INBOX_reader.>"]
    assert not any("DELETE" in s or "PURGE" in s or s in ("$JS.API.>", ">") for s in reader_pub)
    _, runtime_sub = perms["runtime"]
    assert "_INBOX.>" not in runtime_sub and "_INBOX_memoir.>" in runtime_sub  # clients cannot read its replies
    text = (DEPLOY / "nats-accounts.conf").read_text()
    assert re.findall(r"password:\s*(\S+)", text) == [f"$NATS_{r.upper()}_PASSWORD" for r in ROLES]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]  # type: ignore[no-any-return]


def test_compose_and_kubernetes_log_the_runtime_in_as_runtime() -> None:
    for name, service in _compose().items():
        env = service.get("environment", {})
        if service.get("image") == "memoir:latest":
            assert env["MEMOIR_NATS_USER"] == "runtime" and env["MEMOIR_NATS_INBOX_PREFIX"] == "_INBOX_memoir"
            assert env["MEMOIR_NATS_PASSWORD"].startswith("${NATS_RUNTIME_PASSWORD:?")
        if str(service.get("image", "")).startswith("nats:"):
            assert "./nats-accounts.conf:/etc/nats/nats-accounts.conf:ro" in service["volumes"], name
            assert all(env[f"NATS_{r.upper()}_PASSWORD"].startswith("${") for r in ROLES)
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.yaml").read_text())["stringData"]
    assert "MEMOIR_NATS_PASSWORD" in secret and "MEMOIR_NATS_PASSWORD" not in config
    env = {**config, **secret}
    auth = NatsAuth.from_env(env)
    assert (auth.user, auth.inbox_prefix) == ("runtime", "_INBOX_memoir")
