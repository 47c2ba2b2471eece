"""Every journal backend behind one factory, so one suite runs against all of them; and `ev()`.

Add a backend by adding a `Backend` to BACKENDS: a name, a function that opens the journal on a
given directory (the same directory reopens the same store), and whether it survives a reopen.
The `journal_factory` fixture (tests/conftest.py) runs a test once per backend.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import Envelope, Journal, MemoryJournal, SqliteJournal

from .postgres import POSTGRES_URL, schema_for


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path], Journal]
    reopenable: bool = True  # False: a new open starts empty (memory)


def _memory() -> Callable[[Path], Journal]:
    stores: dict[Path, MemoryJournal] = {}
    return lambda d: stores.setdefault(d, MemoryJournal())


def _postgres(directory: Path) -> Journal:
    """The test's own schema; the fixture has checked that the server answers."""
    from runtime.journal.postgres import PostgresJournal

    return PostgresJournal(f"{POSTGRES_URL}?schema={schema_for('t_', directory)}")


class _JetStream:
    """One embedded nats-server (sync_interval: always) per test directory, reused on reopen."""

    def __init__(self) -> None:
        self.servers: dict[Path, Any] = {}

    def open(self, directory: Path) -> Journal:
        from runtime.journal.jetstream import JetStreamJournal

        return _ServedJournal(self, directory, JetStreamJournal)  # type: ignore[return-value]


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

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Journal]:
        async with self.backend.open(self.directory) as journal:
            yield journal


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
