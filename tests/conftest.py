"""Shared fixtures: every journal backend behind one factory, so one suite runs against all of them.

Add a backend by adding a `Backend` to BACKENDS: a name, a function that opens the journal on a
given directory (the same directory reopens the same store), and whether it survives a reopen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime import Journal, MemoryJournal, SqliteJournal

Opener = Callable[[Path], Awaitable[Journal]]


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


BACKENDS = [
    Backend("memory", _memory(), reopenable=True),  # the same object comes back: a reopen keeps it
    Backend("sqlite", lambda d: SqliteJournal(d / "journal.db")),
]


class JournalFactory:
    """Opens, closes and reopens one backend's store in a test's directory."""

    def __init__(self, backend: Backend, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self._stack = contextlib.AsyncExitStack()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Journal]:
        journal = self.backend.open(self.directory)
        async with journal:
            yield journal


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def journal_factory(request: pytest.FixtureRequest, tmp_path: Path) -> JournalFactory:
    return JournalFactory(request.param, tmp_path)


@pytest.fixture
async def journal(journal_factory: JournalFactory) -> AsyncIterator[Journal]:
    async with journal_factory.open() as j:
        yield j


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
