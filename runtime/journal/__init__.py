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
from ..wire.auth import NatsAuth
from ..wire.redact import redact_url
from .base import Journal
from .jetstream import JetStreamJournal
from .memory import MemoryJournal
from .postgres import PostgresJournal
from .sqlite import SqliteJournal


def open_journal(url: str, *, nats_auth: NatsAuth | None = None) -> Journal:
    """Build (not yet open) the journal a URL names; use it as `async with open_journal(url) as j:`.

    `nats_auth`: credentials and TLS for a `nats://` or `tls://` journal's own connection.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryJournal(url)
    if scheme == "sqlite":
        return SqliteJournal.from_url(url)
    if scheme in ("postgresql", "postgres"):
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the postgresql:// journal needs the asyncpg package: `pip install asyncpg`"
                " (or install memoir with its postgres extra)"
            ) from None
        return PostgresJournal(url)
    if scheme in ("nats", "tls"):
        return JetStreamJournal(url, auth=nats_auth)
    raise ConfigError(
        f"unknown journal URL {redact_url(url)!r}: expected memory://, sqlite:///path.db, postgresql://… or nats://…"
    )


__all__ = ["Journal", "MemoryJournal", "SqliteJournal", "open_journal"]
