"""The journal as the read-only commands (`events`, `state`, `export`, `timers`) open it.

Opening a SQLite journal creates its file and directory; a command that only reads must not
leave a `.memoir/journal.db` behind in a directory that never held a runtime, so a missing
file is said at once, with what to do. Other journals (PostgreSQL, JetStream) live elsewhere:
their own errors say whether they are there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ...archive import Archive, ArchivingJournal
from ...journal import Journal, open_journal
from ...journal._urls import parse_sqlite_url
from .outcome import Failure, not_found, unreachable
from .target import Target


@asynccontextmanager
async def reading(target: Target) -> AsyncIterator[Journal]:
    """The target's journal, open; a SQLite file that is not there is `unreachable`, and not created."""
    url = target.settings.journal()
    if url.startswith("sqlite:"):
        path, _ = parse_sqlite_url(url)
        if path != ":memory:" and not Path(path).is_file():  # noqa: ASYNC240 - one stat, before any I/O
            raise unreachable(
                f"no journal at {path}: no Memoir runtime has written here"
                f" (start one with `memoir run --data-dir {target.data}`, or give --data-dir or --journal)"
            )
    journal = open_journal(url, nats_auth=target.auth)
    if target.settings.archive_url:  # the runtime moved old events there: reads fall through to it
        journal = ArchivingJournal(journal, Archive(target.settings.archive_url, create=False))
    async with journal:
        yield journal


async def no_events(journal: Journal, entity_type: str, entity_id: str) -> Failure:
    """The one answer for an entity with no history, whichever command asked."""
    deleted = await journal.is_deleted(entity_type, entity_id)
    return not_found(f"{entity_type}/{entity_id} {'was deleted' if deleted else 'has no events'} in {journal.url}")
