"""Journals: one protocol, several backends, chosen by URL.

| URL | backend |
| --- | --- |
| `memory://` | a dict; tests only |
| `sqlite:///path.db` | the embedded default: WAL, synchronous=FULL, group commit |
| `postgresql://user@host/db?schema=memoir` | PostgreSQL via asyncpg (extra `memoir[postgres]`) |
| `nats://host:port?prefix=memoir` | JetStream itself: the append is the publish |
"""

from __future__ import annotations

from ..model.errors import ConfigError
from .base import Journal
from .memory import MemoryJournal
from .sqlite import SqliteJournal


def open_journal(url: str) -> Journal:
    """Build (not yet open) the journal a URL names; use it as `async with open_journal(url) as j:`."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryJournal(url)
    if scheme == "sqlite":
        return SqliteJournal.from_url(url)
    if scheme in ("postgresql", "postgres"):
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigError("the postgresql:// journal needs asyncpg: pip install 'memoir[postgres]'") from None
        from .postgres import PostgresJournal

        return PostgresJournal(url)
    if scheme in ("nats", "tls"):
        from .jetstream import JetStreamJournal

        return JetStreamJournal(url)
    raise ConfigError(f"unknown journal URL {url!r}: expected memory://, sqlite:///path.db, postgresql://… or nats://…")


__all__ = ["Journal", "MemoryJournal", "SqliteJournal", "open_journal"]
