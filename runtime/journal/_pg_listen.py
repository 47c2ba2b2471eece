"""Other processes' appends to a PostgreSQL journal, heard through LISTEN/NOTIFY.

Without it a tailer (the outbox publisher, the timer relay) learns of another process's appends
only by asking the store, on a timer: an idle member then spends its CPU asking PostgreSQL, a
few times a second, whether anything was written. Instead each append transaction issues
`pg_notify(channel, token)` (postgres.py: in the same statement on the one-round-trip path;
PostgreSQL delivers it on commit, once per transaction), and every journal instance keeps one
dedicated connection LISTENing on its schema's channel. A notification whose payload is not this
instance's own token sets the journal's `next_append()` event; its own appends set it already.

The payload is `"{token} {position}"`, the last position the transaction stored: the journal keeps
the highest it has heard of (`high`, together with its own appends and the counter read when
listening starts), so a tailer at the tail, asking for positions past it, is answered "nothing"
without a query (postgres.py `read_all`; bounded in time, see there).

A listening connection can die silently (a failover, `pg_terminate_backend`, a half-open TCP
link), so `up` is True only while it is known to work: a lost one is reconnected with backoff,
a quiet one is probed every `check_every` seconds, and every change of `up` wakes the tailers
(`wake`), who read the store once (nothing is missed while nobody listened) and choose their
poll by `up` (`Journal.tail_poll`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from ..model.backoff import Backoff
from ._faults import pg_errors

log = structlog.get_logger("memoir.journal")


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a journal schema: at most 63 bytes (PostgreSQL's identifier limit)."""
    name = f"memoir_appended.{schema}"
    return name if len(name) <= 63 else "memoir_appended." + hashlib.sha256(schema.encode()).hexdigest()[:40]


class AppendListener:
    """`run()` in a task group until cancelled; `up` says whether notifications are being heard."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        token: str,
        wake: Callable[[], None],
        *,
        where: str,
        position: Callable[[Any], Awaitable[int]],
        check_every: float = 15.0,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.token = token  # the payload of this instance's own notifications: ignored
        self.wake = wake
        self.position = position  # the journal's last position, read on a connection once it listens
        self.high = 0  # the highest position heard of (notifications, and the counter when listening began)
        self.where = where
        self.check_every = check_every
        self.up = False
        self.heard = 0  # notifications from other writers (for tests and benchmarks)
        self.connections = 0  # successful LISTENs so far
        self.pid: int | None = None  # the listening connection's server process (for tests)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        token, _, position = payload.partition(" ")
        if token != self.token:
            self.heard += 1
            if position.isdigit():
                self.high = max(self.high, int(position))
            self.wake()

    async def run(self) -> None:
        import asyncpg

        retry = Backoff(0.1, cap=5.0)
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await self._hold(conn)
                retry.reset()
            except pg_errors() as exc:  # the tailers poll meanwhile
                (log.info if self.up else log.debug)("journal listener lost", at=self.where, error=str(exc))
            finally:
                self._set_up(False)
                if conn is not None:
                    conn.terminate()  # never wait on a goodbye from a connection that may be dead
            await retry.sleep()

    async def _hold(self, conn: Any) -> None:
        """LISTEN on `conn` until it is lost (returns) or fails a probe (raises)."""
        lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(self.channel, self._on_notify)
        self.high = max(self.high, await self.position(conn))  # after LISTEN: any later commit is heard
        self.pid = conn.get_server_pid()
        self._set_up(True)
        while not lost.is_set():
            with anyio.move_on_after(self.check_every):
                await lost.wait()
            if not lost.is_set():  # quiet: make sure the link still carries anything
                await conn.fetchval("SELECT 1", timeout=10)

    def _set_up(self, up: bool) -> None:
        if up:
            self.connections += 1
        if up != self.up:
            self.up = up
            self.wake()  # tailers read once now and choose their poll by `up`
