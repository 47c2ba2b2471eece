"""A real service for the access tests: embedded nats-server, SQLite journal, the NATS door with a verifier."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from runtime import App, Client, Service, SqliteJournal, Verifier
from runtime.serve.service import EmbeddedNats
from runtime.serve.service.nats_door import NatsDoor


@dataclass
class Served:
    svc: Service
    journal: SqliteJournal
    url: str
    transport: NatsDoor


@contextlib.asynccontextmanager
async def serve(app: App, tmp: Path, verifier: Verifier | None) -> AsyncIterator[Served]:
    async with (
        EmbeddedNats(tmp / "nats") as server,
        SqliteJournal(tmp / "journal.db") as journal,
        Service(app, journal, nats_url=server.url) as svc,
        anyio.create_task_group() as tg,
    ):
        assert svc.nc is not None
        transport = NatsDoor(svc.runtime, svc.nc, workers=8, verifier=verifier)
        await tg.start(transport.run)
        yield Served(svc, journal, server.url, transport)
        await transport.stop()


def client(served: Served, token: str | None = None) -> Client:
    return Client(served.url, token=token)
