"""The cluster deployment files in deploy/ stay true to the code: they parse, every setting they
name exists, they agree with each other, and the NATS cluster config compose runs forms a
JetStream cluster when started as three local nats-server processes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from cluster.natscluster import NatsCluster, Node
from nats.js.api import StreamConfig
from support.deploy import DEPLOY, env_file
from support.waiting import eventually

from runtime.serve.process.settings import Settings
from runtime.serve.service.embedded_nats import find_binary
from runtime.wire.auth import NatsAuth
from runtime.wire.nats import SERVER_PINGS, close_quietly, connect

ROOT = DEPLOY.parent
YAML_FILES = [DEPLOY / "compose.yaml", DEPLOY / "helm" / "nats-values.yaml", *sorted((DEPLOY / "k8s").glob("*.yaml"))]
CLUSTER_FILES = [DEPLOY / "Dockerfile", DEPLOY / "nats-cluster.conf", *YAML_FILES]


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _k8s() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) if (doc := _yaml(path))}


def test_every_yaml_file_parses() -> None:
    for path in YAML_FILES:
        assert isinstance(_yaml(path), dict), path


def test_every_setting_named_exists_in_theenv_file() -> None:
    known = set(env_file())
    for path in CLUSTER_FILES:
        named = set(re.findall(r"(?<![.\w])MEMOIR_[A-Z0-9_]+", path.read_text()))  # not a stream in a subject
        assert named <= known, f"{path.name} names settings memoir.env lacks: {sorted(named - known)}"


def test_the_image_is_slim_runs_as_a_user_and_checks_readiness() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/readyz" in text.split("HEALTHCHECK", 1)[1]
    assert 'ENTRYPOINT ["memoir"]' in lines and 'CMD ["run"]' in lines
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_compose_runs_three_nats_nodes_postgres_and_three_clustered_replicas() -> None:
    compose = _yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    nats = sorted(name for name, s in services.items() if str(s.get("image", "")).startswith("nats:"))
    memoir = sorted(name for name, s in services.items() if s.get("image") == "memoir:latest")
    assert nats == ["nats-1", "nats-2", "nats-3"] and len(memoir) == 3 and "postgres" in services
    conf = (DEPLOY / "nats-cluster.conf").read_text()
    routes = set(re.findall(r"nats-route://([\w-]+):6222", conf))
    assert routes == set(nats)  # the config's routes are compose's NATS services
    assert {services[n]["environment"]["NATS_SERVER_NAME"] for n in nats} == set(nats)
    for name in nats:
        assert any(v.endswith(":/etc/nats/nats-cluster.conf:ro") for v in services[name]["volumes"])
    defaults = env_file()
    first_nodes = set()
    for name in memoir:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert env["MEMOIR_CLUSTER"] == "true" and env["MEMOIR_STREAM_REPLICAS"] == "3"
        assert env["MEMOIR_JOURNAL_URL"].startswith("postgresql://")
        (host,) = re.findall(r"^nats://([\w-]+):4222$", env["MEMOIR_NATS_URL"])
        first_nodes.add(host)
        settings = Settings.from_env({**defaults, **env})  # accepted as it stands
        assert settings.cluster and settings.cluster_config() is not None
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert first_nodes == set(nats)  # each replica starts on its own node


def test_the_kubernetes_manifests_fit_together() -> None:
    docs = _k8s()
    assert {"ConfigMap", "Secret", "Deployment", "PodDisruptionBudget", "Kustomization"} <= set(docs)
    kustomize = docs["Kustomization"]
    assert all((DEPLOY / "k8s" / r).exists() for r in kustomize["resources"])
    deployment = docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}
    assert "/readyz" in str(container["readinessProbe"]) and "/healthz" in str(container["livenessProbe"])
    settings = {**env_file(), **docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}
    assert "MEMOIR_JOURNAL_URL" in docs["Secret"]["stringData"]
    assert "MEMOIR_JOURNAL_URL" not in docs["ConfigMap"]["data"]  # the password stays in the Secret
    parsed = Settings.from_env({k: str(v) for k, v in settings.items()})
    assert parsed.cluster and parsed.stream_replicas == 3
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        named = container[probe]["httpGet"]["port"]
        assert ports[named] == parsed.metrics_port, f"{probe} asks port {named}, not the metrics port"
    assert parsed.metrics_host == "0.0.0.0", "the kubelet's probes and Prometheus reach the pod from outside"


def test_the_helm_values_describe_the_same_three_node_jetstream_cluster() -> None:
    values = _yaml(DEPLOY / "helm" / "nats-values.yaml")["config"]
    assert values["cluster"]["enabled"] is True and values["cluster"]["replicas"] == 3
    assert values["jetstream"]["enabled"] is True and values["jetstream"]["fileStore"]["enabled"] is True
    conf = (DEPLOY / "nats-cluster.conf").read_text()
    payload = re.search(r"max_payload:\s*(\S+)", conf)
    assert payload is not None and payload.group(1) in values["merge"]["max_payload"]
    assert _liveness(conf) == _liveness((DEPLOY / "nats-server.conf").read_text()) == _liveness(SERVER_PINGS)
    assert _liveness(conf) == (values["merge"]["ping_interval"], str(values["merge"]["ping_max"]))
    assert _k8s()["ConfigMap"]["data"]["MEMOIR_STREAM_REPLICAS"] == str(values["cluster"]["replicas"])


def _liveness(conf: str) -> tuple[str, str]:
    """The server's ping interval and how many pings a client may miss, as a config file sets them."""
    interval = re.search(r'^ping_interval:\s*"([^"]+)"', conf, re.M)
    most = re.search(r"^ping_max:\s*(\d+)", conf, re.M)
    assert interval is not None and most is not None, "the config sets no liveness pings"
    return interval.group(1), most.group(1)


def _local(conf: str) -> Any:
    """The compose config with only its ports, store and route hosts moved to this machine."""

    def render(node: Node, nodes: list[Node]) -> str:
        text = conf
        for old, new in [
            ("0.0.0.0:4222", f"127.0.0.1:{node.port}"),
            ("0.0.0.0:6222", f"127.0.0.1:{node.route_port}"),
            ("0.0.0.0:8222", f"127.0.0.1:{node.monitor_port}"),
            ("store_dir: /data", f'store_dir: "{node.store.as_posix()}"'),
            *[
                (f"nats-route://nats-{i + 1}:6222", f"nats-route://127.0.0.1:{n.route_port}")
                for i, n in enumerate(nodes)
            ],
        ]:
            assert old in text, old
            text = text.replace(old, new)
        return text

    return render


@pytest.mark.anyio
async def test_the_compose_nats_config_forms_a_jetstream_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = (DEPLOY / "nats-cluster.conf").read_text()
    passwords = {f"NATS_{role}_PASSWORD": f"pw-{role}" for role in ("RUNTIME", "CLIENT", "READER")}
    for name, value in passwords.items():
        monkeypatch.setenv(name, value)  # the nodes' environment: the users' passwords
    checked = await anyio.run_process(
        [find_binary(), "-t", "-c", str(DEPLOY / "nats-cluster.conf")],
        check=False,
        env={**os.environ, "NATS_SERVER_NAME": "nats-1"},
    )
    assert checked.returncode == 0, checked.stderr.decode()
    (tmp_path / "nats-accounts.conf").write_text((DEPLOY / "nats-accounts.conf").read_text())  # its include
    runtime = NatsAuth(user="runtime", password="pw-RUNTIME", inbox_prefix="_INBOX_memoir")
    async with NatsCluster(tmp_path, render=_local(conf), auth=runtime) as cluster:
        nc = await connect(cluster.urls[0], auth=runtime)
        try:
            js = nc.jetstream(timeout=10)
            info = await js.add_stream(StreamConfig(name="R3CHECK", subjects=["memoir.r3check.>"], num_replicas=3))
            assert info.config.num_replicas == 3

            async def replicated() -> bool:
                nonlocal info
                info = await js.stream_info("R3CHECK")
                return bool(info.cluster and info.cluster.leader and len(info.cluster.replicas or []) == 2)

            await eventually(replicated, 20, "the R3 stream led, with its two replicas")
            assert info.cluster is not None and info.cluster.replicas is not None
            replicas = info.cluster.replicas
            assert {info.cluster.leader, *(r.name for r in replicas)} == {n.name for n in cluster.nodes}
            ack = await js.publish("memoir.r3check.a", b"x")
            assert ack.seq == 1
        finally:
            await close_quietly(nc)
