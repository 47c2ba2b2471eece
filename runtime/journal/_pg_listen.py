"""Other processes' appends to a PostgreSQL journal, heard through LISTEN/NOTIFY.

Without it a tailer (the outbox publisher, the timer relay) learns of another process's appends
only by asking the store, on a timer: an idle member then spends its CPU asking PostgreSQL, a
few times a second, whether anything was written. Instead each append transaction issues
`pg_notify(channel, token)` (postgres.py: in the same statement on the one-round-trip path;
PostgreSQL delivers it on commit, once per transaction), and every journal instance keeps one
dedicated connection LISTENing on its schema's channel. A notification whose payload is not this
instance's own token sets the journal's `next_append()` event; its own appends set it already.

The payload is `"{token} {position} {types}"`: the last position the transaction stored and its
events' entity types (comma-separated; names cannot hold a comma). The journal keeps the highest
position it has heard of (`high`, together with its own appends and the counter read when listening
starts), so a tailer at the tail, asking for positions past it, is answered "nothing" without a
query (postgres.py `read_all`; bounded in time, see there); and the last position heard of per type
(`last_of`), so a reader of some types (`read_types`: a publisher partition, a view) whose types
were not written is answered the same way while the others are. Notifications arrive in commit
order and positions are assigned in commit order, so nothing heard of later can lie below. A
payload without types (an older Memoir), and the counter read when listening starts, count for
every type.

A listening connection can die silently (a failover, `pg_terminate_backend`, a half-open TCP
link), so `up` is True only while it is known to work: a lost one is reconnected with backoff,
a quiet one is probed every `check_every` seconds, and every change of `up` wakes the tailers
(`wake`), who read the store once (nothing is missed while nobody listened) and choose their
poll by `up` (`Journal.tail_poll`).

Wake-ups are spaced at least `gather` seconds apart (5 ms): the first notification after a quiet
spell wakes the tailers at once, and those arriving within `gather` of the last wake-up are taken
together at its end. Each wake-up costs every tailer in the process a query; a cluster member
hears every other member's commits (hundreds a second under load), so without it a tailer's
reads grow with the other members' commit rate, not with the events (`benchmarks/cluster.py
--capped`: the outbox publisher's member spent a tenth of its time in one-commit reads).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Collection
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
        gather: float = 0.005,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.token = token  # the payload of this instance's own notifications: ignored
        self.wake = wake
        self.position = position  # the journal's last position, read on a connection once it listens
        self.high = 0  # the highest position heard of (notifications, and the counter when listening began)
        self.untyped = 0  # the highest position heard of without its types: it counts for every type
        self.typed: dict[str, int] = {}  # entity type -> the highest position heard of with it
        self.where = where
        self.check_every = check_every
        self.gather = gather
        self._woke_at = -math.inf  # monotonic: the last wake-up for others' appends
        self._held = anyio.Event()  # set while notifications wait for the next wake-up
        self.up = False
        self.heard = 0  # notifications from other writers (for tests and benchmarks)
        self.connections = 0  # successful LISTENs so far
        self.pid: int | None = None  # the listening connection's server process (for tests)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        token, _, rest = payload.partition(" ")
        if token != self.token:
            self.heard += 1
            position, _, types = rest.partition(" ")
            if position.isdigit():
                last = int(position)
                self.high = max(self.high, last)
                if types:
                    for t in types.split(","):
                        self.typed[t] = last
                else:
                    self.untyped = max(self.untyped, last)
            if not self._held.is_set() and time.monotonic() - self._woke_at >= self.gather:
                self._woke_at = time.monotonic()
                self.wake()
            else:
                self._held.set()  # `_wake_held` wakes the tailers once `gather` has passed

    def last_of(self, types: Collection[str]) -> int:
        """The highest position heard of that may hold an event of `types`."""
        typed = self.typed
        return max(self.untyped, max((typed.get(t, 0) for t in types), default=0))

    async def _wake_held(self) -> None:
        """The trailing wake-up for notifications that came within `gather` of the last one."""
        while True:
            await self._held.wait()
            await anyio.sleep(max(0.0, self._woke_at + self.gather - time.monotonic()))
            self._held = anyio.Event()
            self._woke_at = time.monotonic()
            self.wake()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._wake_held)
            await self._listen_forever()

    async def _listen_forever(self) -> None:
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
        counter = await self.position(conn)  # after LISTEN: any later commit is heard
        self.high = max(self.high, counter)
        self.untyped = max(self.untyped, counter)  # what committed unheard, of any type
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
