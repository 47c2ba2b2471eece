"""Fixtures for the event-stream tests (timers and workflows included): a private nats-server per test,
and a view store of each kind (memory, SQLite, PostgreSQL) for the tests that take `store`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from support.views import VIEW_STORES, drop_view_schema, open_view_store_for_test

from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.view_store import ViewStore


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture(params=VIEW_STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ViewStore]:
    async with open_view_store_for_test(request.param, tmp_path) as s:
        yield s
    if request.param == "postgres":
        await drop_view_schema(tmp_path)
