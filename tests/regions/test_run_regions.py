"""`memoir run --region`: two processes, one per region, on two NATS clusters joined by gateways."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest
from support.postgres import schema_for
from support.waiting import eventually

from runtime import Client, CommandError, Overloaded, Reply, Unavailable
from runtime.serve.process.local_cluster import LocalMember
from runtime.serve.process.local_regions import NatsRegions

pytestmark = pytest.mark.anyio


MEMOIR = [sys.executable, "-m", "runtime.serve.cli"]


async def memoir(*argv: str) -> str:
    """The CLI as a user runs it; its stdout (it must exit 0)."""
    done = await anyio.run_process([*MEMOIR, *argv], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


_ids = itertools.count()


async def send(client: Client, entity_type: str, entity_id: str, command: str, args: dict[str, object]) -> Reply:
    """As a client should: `unavailable` or `overloaded` (a slow crossing, a move just done) is retried
    with the same command id, which the primary's dedupe makes safe."""
    cid = f"c-{next(_ids)}"
    for _ in range(5):
        try:
            return await client.send(entity_type, entity_id, command, args, command_id=cid, timeout=10)
        except (Unavailable, Overloaded):
            await anyio.sleep(0.5)
    return await client.send(entity_type, entity_id, command, args, command_id=cid, timeout=10)


def member(
    tmp_path: Path, nats: NatsRegions, region: str, extra: list[str] | None = None, *, name: str | None = None
) -> LocalMember:
    name = name or region
    argv = [sys.executable, "-m", "runtime.serve.cli", "run", "entities:sagas", "--nats-url", nats.url(region)]
    argv += ["--region", region, "--regions", "eu,us", "--region-pinned", "account=eu", "--stream-replicas", "3"]
    return LocalMember(name, tmp_path / name, [*argv, *(extra or []), "--data-dir", str(tmp_path / name)])


async def test_memoir_run_serves_a_region_and_commands_reach_the_primary(tmp_path: Path) -> None:
    async with NatsRegions(tmp_path / "nats", ["eu", "us"]) as nats:
        members = [member(tmp_path, nats, r) for r in ("eu", "us")]
        try:
            for m in members:  # one after the other: the first creates the claims bucket
                await m.spawn()
                await m.serving(90)
            assert "memoir.cmd" in members[1].banner
            async with Client(nats.url("us"), direct=False) as us, Client(nats.url("eu"), direct=False) as eu:
                assert (await send(us, "account", "A1", "deposit", {"amount": 5})).result == 5  # pinned to eu
                assert (await send(eu, "account", "A1", "deposit", {"amount": 2})).result == 7
                item = {"units": 3, "on": "2022-03-01"}
                assert (await send(us, "inventory", "I1", "receive", item)).seq == 1  # first written in us
                assert (await send(eu, "inventory", "I1", "receive", item)).seq == 2  # so it crosses to us
            async with Client(nats.url("us"), prefix="memoir.r.us", direct=False) as us_member:
                with pytest.raises(CommandError) as refused:  # past the door: the fence refuses it
                    await us_member.send("account", "A1", "deposit", {"amount": 1})
                assert refused.value.code == "overloaded"
            moved = await memoir(
                "region", "move", "account", "A1", "--to", "us", "--regions", "eu,us", "--region-pinned", "account=eu",
                "--nats-url", nats.url("eu"), "--data-dir", str(tmp_path / "cli"), "--json",
            )  # fmt: skip
            assert json.loads(moved) == {"type": "account", "id": "A1", "from": "eu", "to": "us", "after_seq": 2}
            async with Client(nats.url("eu"), direct=False) as eu:
                assert (await send(eu, "account", "A1", "deposit", {"amount": 1})).seq == 3  # crosses to us now
            async with Client(nats.url("us"), prefix="memoir.r.us", direct=False) as us_member:
                assert (await us_member.send("account", "A1", "deposit", {"amount": 1})).result == 9  # us writes it
            where = ["--app", "entities:sagas", "--nats-url", nats.url("eu"), "--data-dir", str(tmp_path / "cli")]

            async def read_in_eu() -> bool:  # eu reads what us wrote, from its replica (eventually)
                argv = [*MEMOIR, "region", "state", "account", "A1", "--in", "eu", *where]
                done = await anyio.run_process(argv, check=False)
                return done.returncode == 0 and bool(
                    json.loads(done.stdout) == {"seq": 4, "state": {"balance": 9, "closed": False}}
                )

            await eventually(read_in_eu, timeout=30, what="the account's state in eu's replica")
            history = await memoir("region", "events", "account", "A1", "--in", "eu", "--json", *where)
            assert [json.loads(line)["seq"] for line in history.splitlines()] == [1, 2, 3, 4]
        finally:
            for m in members:
                await m.stop()
        assert [m.exit_status for m in members] == [0, 0]


async def test_memoir_run_serves_a_region_of_two_members(tmp_path: Path, postgres_url: str) -> None:
    """`--cluster` with `--region`: two eu processes on one PostgreSQL schema (journal and views), one us."""
    schema = schema_for("rr_", tmp_path)
    pg = f"{postgres_url}?schema={schema}"
    async with NatsRegions(tmp_path / "nats", ["eu", "us"]) as nats:
        cluster = ["--cluster", "--journal", pg, "--view-store", pg, "--shards", "8", "--lease-ttl", "2"]
        members = [
            member(tmp_path, nats, "eu", cluster, name="eu-1"),
            member(tmp_path, nats, "eu", cluster, name="eu-2"),
            member(tmp_path, nats, "us"),
        ]
        try:
            for m in members:
                await m.spawn()
                await m.serving(90)
            async with Client(nats.url("us"), direct=False) as us, Client(nats.url("eu"), direct=False) as eu:
                for k in range(8):  # pinned to eu: each stored once, by whichever eu member owns it
                    client = us if k % 2 else eu
                    assert (await send(client, "account", f"R{k}", "deposit", {"amount": 5})).seq == 1
                    assert (await send(client, "account", f"R{k}", "deposit", {"amount": 1})).result == 6
            moved = await memoir(
                "region", "move", "account", "R3", "--to", "us", "--regions", "eu,us", "--region-pinned", "account=eu",
                "--nats-url", nats.url("eu"), "--data-dir", str(tmp_path / "cli"), "--json",
            )  # fmt: skip
            assert json.loads(moved) == {"type": "account", "id": "R3", "from": "eu", "to": "us", "after_seq": 2}
            async with Client(nats.url("eu"), direct=False) as eu:
                assert (await send(eu, "account", "R3", "deposit", {"amount": 1})).seq == 3  # crosses to us now
        finally:
            for m in members:
                await m.stop()
            conn = await asyncpg.connect(postgres_url)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()
        assert [m.exit_status for m in members] == [0, 0, 0]
