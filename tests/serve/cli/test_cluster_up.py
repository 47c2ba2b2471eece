"""`memoir cluster up`: a cluster in one command, driven as a newcomer drives it (issue 23, item 6).

Three NATS nodes and three members start; `memoir cluster status` shows the shards spread; a
command to an entity of each member, sent with `memoir send` through one NATS node, is answered;
SIGTERM stops it all with exit status 0 and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from support.postgres import schema_for
from support.waiting import eventually_sync

from runtime.serve.service.cluster import shard_of

ROOT = Path(__file__).resolve().parents[3]
MEMOIR = [sys.executable, "-m", "runtime.serve.cli"]
PREFIX = "memoir"


def _memoir(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEMOIR, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: the members, the NATS nodes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _owners(url: str) -> dict[int, str]:
    """Shard -> member, once three members hold every shard (`memoir cluster status --json`)."""
    owners: dict[int, str] = {}

    def settled() -> bool:
        shown = _memoir("cluster", "status", "--json", "--nats-url", url, "--prefix", PREFIX)
        if shown.returncode != 0:
            return False
        snap = json.loads(shown.stdout)
        per_member = snap["shards_per_member"]
        owners.clear()
        owners.update({shard: member for member, shards in per_member.items() for shard in shards})
        return len(per_member) == 3 and len(owners) == snap["shard_count"] and not snap["unowned_shards"]

    eventually_sync(settled, 60, "three members holding every shard")
    return owners


@contextlib.contextmanager
def _up(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`memoir cluster up --members 3 ARGS`, its output in a file; killed if the test did not stop it."""
    out = tmp_path / "up.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [*MEMOIR, "cluster", "up", "--members", "3", "--data-dir", str(tmp_path / "c"), *args],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _scenario(proc: subprocess.Popen[str], out: Path) -> None:
    eventually_sync(lambda: "Ctrl-C" in out.read_text() or proc.poll() is not None, 120, "the cluster listing")
    listing = out.read_text()
    assert proc.poll() is None, listing
    url = re.search(r"--nats-url (\S+)", listing)
    assert url is not None, listing
    members = {int(pid) for pid in re.findall(r"member m\d +pid (\d+)", listing)}
    assert len(members) == 3, listing
    children = _descendants(proc.pid)
    assert members <= children and len(children) >= 6, (children, listing)  # 3 members, 3 NATS nodes

    owners = _owners(url.group(1))
    shard_count = max(owners) + 1
    chosen: dict[str, str] = {}  # member -> an entity it owns
    for k in range(1000):
        chosen.setdefault(owners[shard_of("inventory", f"x{k}", shard_count)], f"x{k}")
    assert len(chosen) == 3
    receive = '{"units": 2, "on": "2022-03-01"}'
    for entity in chosen.values():
        sent = _memoir("send", "inventory", entity, "receive", receive, "--json", "--nats-url", url.group(1))
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["ok"] is True
    status = _memoir("cluster", "--nats-url", url.group(1))  # no subcommand: status, as before `up`
    assert status.returncode == 0 and "MEMBER" in status.stdout, status.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, out.read_text()
    assert "every member exited 0, then every NATS node (m1, m2, m3, nats n1, nats n2, nats n3)" in out.read_text()
    eventually_sync(lambda: not any(_alive(pid) for pid in children), 10, "no child process left")


def test_a_cluster_in_one_command_on_jetstream(tmp_path: Path) -> None:
    """The JetStream journal on the same NATS nodes; an app without views (views need PostgreSQL)."""
    with _up(tmp_path, "entities:sagas") as (proc, out):
        _scenario(proc, out)


@pytest.fixture
def pg_schema_url(tmp_path: Path, postgres_url: str) -> Iterator[str]:
    schema = schema_for("up_", tmp_path)
    yield f"{postgres_url}?schema={schema}"

    async def drop() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())


def test_a_cluster_in_one_command_on_postgresql(tmp_path: Path, pg_schema_url: str) -> None:
    """The PostgreSQL journal, views in the same database: the default app, views and all."""
    with _up(tmp_path, "--journal", pg_schema_url) as (proc, out):
        _scenario(proc, out)


def test_a_member_that_dies_stops_the_cluster_and_up_says_so(tmp_path: Path) -> None:
    """SIGKILL one member: `up` stops the rest and exits 1 naming it; nothing is left running."""
    with _up(tmp_path, "entities:sagas") as (proc, out):
        eventually_sync(lambda: "Ctrl-C" in out.read_text() or proc.poll() is not None, 120, "the cluster listing")
        listing = out.read_text()
        victim = re.search(r"member m2 +pid (\d+)", listing)
        assert victim is not None, listing
        children = _descendants(proc.pid)
        os.kill(int(victim.group(1)), signal.SIGKILL)
        assert proc.wait(90) == 1, out.read_text()
        assert "m2 exited on its own" in out.read_text()
        eventually_sync(lambda: not any(_alive(pid) for pid in children), 10, "no child process left")


def test_views_on_jetstream_without_a_shared_view_store_is_a_usage_error(tmp_path: Path) -> None:
    """Refused before anything starts, saying what would work."""
    refused = _memoir("cluster", "up", "--data-dir", str(tmp_path / "c"))  # the default app has views
    assert refused.returncode == 2
    assert "memoir: usage:" in refused.stderr and "--view-store" in refused.stderr
    assert not (tmp_path / "c").exists()
