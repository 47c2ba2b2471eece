"""Fixtures every suite can take: the anyio backend, a journal of each backend, PostgreSQL.

Plain helpers (builders, constants, `eventually`) are in `support/`: tests import those, never
a conftest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.journals import BACKENDS, JETSTREAM, JournalFactory
from support.postgres import POSTGRES_URL, need_postgres, schema_for

from runtime import Journal

pytest_plugins = ["pytester"]  # tests/testing runs a user's test project through pytest itself


# Async tests run on anyio's pytest plugin (each module sets `pytestmark = pytest.mark.anyio`),
# on the asyncio backend because nats-py needs it. Unlike pytest-asyncio, it runs an async
# fixture's setup and teardown in one task, which a fixture holding a task group open (a
# journal, a runtime, a service) requires.
@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def postgres_url() -> str:
    """The test server's URL. Skips when PostgreSQL does not answer; under CI=true, fails instead."""
    return need_postgres()


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
async def journal_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalFactory]:
    """One backend's journal in the test's directory: each test taking it runs on every backend."""
    if request.param.name == "postgres":
        request.getfixturevalue("postgres_url")
    factory = JournalFactory(request.param, tmp_path)
    yield factory
    if request.param.name == "nats":  # each test has its own server; stop it
        server = JETSTREAM.servers.pop(tmp_path, None)
        if server is not None:
            await server.stop()
    if request.param.name == "postgres":  # each test has its own schema; drop it
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema_for('t_', tmp_path)} CASCADE")
        await conn.close()


@pytest.fixture
async def journal(journal_factory: JournalFactory) -> AsyncIterator[Journal]:
    async with journal_factory.open() as j:
        yield j
