"""Shared fixtures: every journal backend behind one factory, so one suite runs against all of them.

Add a backend by adding a `Backend` to BACKENDS: a name, a function that opens the journal on a
given directory (the same directory reopens the same store), and whether it survives a reopen.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime import Envelope, Journal, MemoryJournal, SqliteJournal

Opener = Callable[[Path], Awaitable[Journal]]

pytest_plugins = ["pytester"]  # tests/testing runs a user's test project through pytest itself


# Async tests run on anyio's pytest plugin (each module sets `pytestmark = pytest.mark.anyio`),
# on the asyncio backend because nats-py needs it. Unlike pytest-asyncio, it runs an async
# fixture's setup and teardown in one task, which a fixture holding a task group open (a
# journal, a runtime, a service) requires.
@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path], Journal]
    reopenable: bool = True  # False: a new open starts empty (memory)


def _memory() -> Callable[[Path], Journal]:
    stores: dict[Path, MemoryJournal] = {}
    return lambda d: stores.setdefault(d, MemoryJournal())


POSTGRES_URL = os.environ.get("MEMOIR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers, else why not."""
    import socket
    from urllib.parse import urlsplit

    p = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((p.hostname or "127.0.0.1", p.port or 5432), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable at {p.hostname}:{p.port or 5432}: {exc}"


def need_postgres() -> None:
    """Skip when no server answers — except in CI (CI=true), where PostgreSQL must be there."""
    why = postgres_reachable()
    if why is not None:
        if in_ci():
            pytest.fail(f"{why} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(why)


def _postgres(directory: Path) -> Journal:
    from runtime.journal.postgres import PostgresJournal

    need_postgres()
    schema = "t_" + "".join(ch for ch in directory.name.lower() if ch.isalnum())[-40:]
    return PostgresJournal(f"{POSTGRES_URL}?schema={schema}")


class _JetStream:
    """One embedded nats-server (sync_interval: always) per test directory, reused on reopen."""

    def __init__(self) -> None:
        self.servers: dict[Path, Any] = {}

    def open(self, directory: Path) -> Journal:
        from runtime.journal.jetstream import JetStreamJournal

        return _ServedJournal(self, directory, JetStreamJournal)


class _ServedJournal:
    """Starts the test's server on first open; the journal itself is opened by `async with`."""

    def __init__(self, owner: _JetStream, directory: Path, cls: Any) -> None:
        self.owner, self.directory, self.cls = owner, directory, cls
        self.journal: Any = None

    async def __aenter__(self) -> Journal:
        from runtime.serve.service.embedded_nats import EmbeddedNats

        server = self.owner.servers.get(self.directory)
        if server is None:
            server = self.owner.servers[self.directory] = EmbeddedNats(self.directory / "nats", sync="always")
            await server.start()
        self.journal = self.cls(server.url)
        return await self.journal.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: object) -> None:
        await self.journal.__aexit__(*exc)


JETSTREAM = _JetStream()

BACKENDS = [
    Backend("memory", _memory(), reopenable=True),  # the same object comes back: a reopen keeps it
    Backend("sqlite", lambda d: SqliteJournal(d / "journal.db")),
    Backend("postgres", _postgres),
    Backend("nats", JETSTREAM.open),
]


class JournalFactory:
    """Opens, closes and reopens one backend's store in a test's directory."""

    def __init__(self, backend: Backend, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self._stack = contextlib.AsyncExitStack()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Journal]:
        async with self.backend.open(self.directory) as journal:
            yield journal


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
async def journal_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalFactory]:
    factory = JournalFactory(request.param, tmp_path)
    yield factory
    if request.param.name == "nats":  # each test has its own server; stop it
        server = JETSTREAM.servers.pop(tmp_path, None)
        if server is not None:
            await server.stop()
    if request.param.name == "postgres":  # each test has its own schema; drop it
        import asyncpg

        schema = factory.backend.open(tmp_path).schema  # type: ignore[attr-defined]
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def journal(journal_factory: JournalFactory) -> AsyncIterator[Journal]:
    async with journal_factory.open() as j:
        yield j


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


VIEW_STORES = ["memory", "sqlite", "postgres"]


@contextlib.asynccontextmanager
async def open_view_store_for_test(kind: str, directory: Path) -> AsyncIterator[Any]:
    """A view store of `kind` private to one test; the same directory reopens the same one."""
    from runtime.streams.view_store import MemoryViewStore, PostgresViewStore, SqliteViewStore

    if kind == "memory":
        yield MemoryViewStore()
    elif kind == "sqlite":
        async with SqliteViewStore(directory / "views.db") as store:
            yield store
    else:
        need_postgres()
        schema = "v_" + "".join(ch for ch in directory.name.lower() if ch.isalnum())[-40:]
        async with PostgresViewStore(f"{POSTGRES_URL}?schema={schema}") as store:
            yield store


async def drop_view_schema(directory: Path) -> None:
    import asyncpg

    schema = "v_" + "".join(ch for ch in directory.name.lower() if ch.isalnum())[-40:]
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


def ev(
    entity_id: str,
    seq: int,
    payload: bytes = b"{}",
    *,
    entity_type: str = "thing",
    name: str = "Happened",
    command_id: str | None = None,
    reply: bytes | None = None,
) -> Envelope:
    """An envelope as an actor would append it, for the journal tests."""
    return Envelope(
        entity_type=entity_type,
        entity_id=entity_id,
        seq=seq,
        name=name,
        version=1,
        payload=payload,
        recorded_at=time.time_ns(),
        command_id=command_id,
        reply=reply,
    )
