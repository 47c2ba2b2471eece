"""SIGTERM ends every `memoir run` with exit status 0, in a cluster and alone (issue 23, item 3).

An orchestrator reads any other status as a crash. Members used to exit 1 after a clean hand-off
on the PostgreSQL journal and with a PostgreSQL view store: the shard manager's task group was
left out of order, and closing the asyncpg pools then failed. Each scenario serves commands first,
so the stores, the actors and the leases all have something to close.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from support.members import Member, wait_cluster
from support.process import RunningRuntime

from runtime import Client, Envelope
from runtime.journal.postgres import PostgresJournal
from runtime.streams.view_store import PostgresViewStore
from runtime.wire.auth import NatsAuth

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio

ENTITIES = [f"c{k}" for k in range(16)]  # spread over the shards, so every member owns some


async def _serve_some(url: str, prefix: str, auth: NatsAuth | None = None) -> None:
    async with Client(url, prefix=prefix, auth=auth) as client:
        for entity in ENTITIES:
            reply = await client.send("inventory", entity, "receive", {"units": 2, "on": "2022-03-01"}, timeout=10)
            assert reply.result is not None


@pytest.mark.parametrize("journal_kind", ["postgres", "jetstream"])
async def test_members_exit_0_on_sigterm(
    nats_cluster: NatsCluster, tmp_path: Path, prefix: str, pg_schema: str, postgres_url: str, journal_kind: str
) -> None:
    """Two members (views in PostgreSQL either way), each SIGTERMed in turn: 0, 0."""
    urls = nats_cluster.urls
    pg = f"{postgres_url}?schema={pg_schema}"
    journal_url = pg if journal_kind == "postgres" else f"{urls[0]}?prefix={prefix}&replicas=3"
    members = [Member.member(i, urls[i], journal_url, pg, prefix, tmp_path) for i in range(2)]
    for m in members:
        m.start()
    codes: dict[str, int | None] = {}
    try:
        await wait_cluster(urls[0], prefix, 2, members)
        await _serve_some(urls[0], prefix)
        for m in members:  # the first hands its shards to the second, the second to nobody
            codes[m.name] = m.signal(signal.SIGTERM)
    finally:
        for m in members:
            if m.proc is not None:
                codes.setdefault(m.name, m.signal(signal.SIGTERM))
    logs = {m.name: m.log.read_text(errors="replace")[-2000:] for m in members}
    assert codes == {"m0": 0, "m1": 0}, logs


async def test_a_single_process_exits_0_on_sigterm(tmp_path: Path, postgres_url: str, pg_schema: str) -> None:
    """Alone, on the embedded NATS, with the PostgreSQL journal and view store."""
    pg = f"{postgres_url}?schema={pg_schema}"
    runtime = RunningRuntime(tmp_path / "single", "--journal", pg, "--view-store", pg).start()
    try:
        await _serve_some(runtime.nats_url, "memoir", auth=runtime.auth)
    finally:
        code = runtime.stop(signal.SIGTERM)
    assert code == 0, (tmp_path / "single.log").read_text(errors="replace")[-2000:]


async def test_postgres_stores_close_from_a_cancelled_scope(postgres_url: str, pg_schema: str) -> None:
    """A stop that arrives as a cancellation still closes both stores' pools, shielded and bounded.

    The view store's close used to be cancelled halfway (its pool left open, the journal's close
    never reached); a close must finish whatever cancelled its caller.
    """
    url = f"{postgres_url}?schema={pg_schema}"
    journal, views = PostgresJournal(url), PostgresViewStore(url)
    with anyio.CancelScope() as scope:
        await journal.open()
        await views.open()
        pools = journal._pool, views._pool
        event = Envelope(
            entity_type="thing", entity_id="a", seq=1, name="Happened", version=1, payload=b"{}", recorded_at=1
        )
        await journal.append([event], 0)
        scope.cancel()
        await views.close()  # both inside the cancelled scope
        await journal.close()
    assert not scope.cancelled_caught, "a close was cut short by the cancellation"
    assert all(pool._closed for pool in pools)
    async with PostgresJournal(url) as again:
        assert [e.seq for e in await again.read("thing", "a")] == [1]
