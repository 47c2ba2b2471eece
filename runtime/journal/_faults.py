"""Storage faults, recognised once for the journals and the view stores.

A lost connection or a full disk is not a bug in the command that met it: callers get
`Unavailable` (retryable, code `unavailable`) instead of a traceback, and the
store serves again by itself once the fault is gone.
"""

from __future__ import annotations

import errno
import sqlite3
import time

import structlog

from ..model.backoff import Backoff
from ..model.errors import JournalError, Unavailable

log = structlog.get_logger("memoir.journal")


def sqlite_full(exc: BaseException) -> bool:
    """SQLITE_FULL, or the OS saying there is no space (ENOSPC, EDQUOT)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


def sqlite_error(exc: BaseException, what: str, doing: str) -> JournalError:
    """The error a caller sees: `storage full` named as such, never a rollback complaint."""
    if sqlite_full(exc):
        return Unavailable("storage full", f"{what}: {doing}: {exc}")
    return JournalError(f"{what}: {doing}: {exc}")


def pg_errors() -> tuple[type[BaseException], ...]:
    """Everything asyncpg raises for a statement or a connection."""
    import asyncpg

    return (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def pg_connection_lost(exc: BaseException) -> bool:
    """Whether an asyncpg error means the connection (not the statement) is gone."""
    import asyncpg

    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError  # "connection is closed"
        | asyncpg.InternalClientError  # "another operation is in progress": the protocol lost its place
        | asyncpg.PostgresConnectionError  # 08xxx, ConnectionDoesNotExistError
        | asyncpg.AdminShutdownError  # pg_terminate_backend, a fast shutdown
        | asyncpg.CrashShutdownError
        | asyncpg.CannotConnectNowError,  # starting up or shutting down
    )


class Link:
    """One store's view of its storage: one warning when it goes away, one info when it is back,
    and a backoff so a dead server is asked at most a few times a second."""

    def __init__(self, what: str, where: str) -> None:
        self.what = what  # "PostgreSQL journal"
        self.where = where  # host:port/db, no secrets
        self.lost_at: float | None = None
        self._retry_at = 0.0
        self._backoff = Backoff(0.05, cap=1.0)

    def error(self, exc: BaseException | None = None) -> Unavailable:
        detail = f"{self.what} at {self.where}" + (f": {type(exc).__name__}: {exc}" if exc else ": reconnecting")
        return Unavailable("connection lost", detail)

    def lost(self, exc: BaseException) -> Unavailable:
        now = time.monotonic()
        if self.lost_at is None:
            self.lost_at = now
            reason = exc.reason if isinstance(exc, Unavailable) else "connection lost"
            log.warning("storage unavailable", store=self.what, at=self.where, reason=reason, error=str(exc))
        self._retry_at = now + self._backoff.next()
        return self.error(exc)

    def may_retry(self) -> bool:
        return time.monotonic() >= self._retry_at

    def ok(self) -> None:
        if self.lost_at is not None:
            log.info(
                "storage available again",
                store=self.what,
                at=self.where,
                after_s=round(time.monotonic() - self.lost_at, 3),
            )
        self.lost_at = None
        self._backoff.reset()
