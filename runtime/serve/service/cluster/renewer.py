"""Renewing a member's lease (and beating its heartbeat) on threads of their own, so command load
never starves them. `OnThread` is the thread: its own event loop, its own NATS connection.

An asyncio task does not suffice: on an event loop saturated by command work (many tasks, each
running for milliseconds between checkpoints) timers fire seconds late, and the deadline leaves
ttl - margin - ttl/3 for a renewal to come back; measured, a member renewing on its loop lost
every shard while one renewing on a thread lost none (benchmarks/cluster_ownership.py
--compare-loop). So the member lease is renewed by a thread with its own event loop and its own
NATS connection: it needs the GIL only briefly per renewal, and CPython hands the GIL over every
few milliseconds (sys.getswitchinterval) however busy the main thread is.

The thread and the main loop share one `Held`: the thread writes its revision and the send time
of each successful renewal; the fence reads the deadline from it. A float or int attribute is
written and read whole under the GIL, and a stale read only makes the fence stricter (an older
deadline). A lapse is marked on the `Held` first, then the main loop is told.

The lease stands for the member, not for the thread: a renewal is sent only while the member's
own connection (the one commands arrive on) is up, so a member cut off from NATS on that
connection lets its lease lapse as it would with one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from nats.aio.client import Client as NATS

from ....model.backoff import Backoff
from ....wire.nats import close_within, connect
from .leases import Held, Leases, OnLost
from .store import describe

log = structlog.get_logger("memoir.cluster")

_STOP_TRIES = 30  # seconds a stopping thread is given, with a cancel each

Connect = Callable[[], Awaitable[NATS]]
Body = Callable[[NATS], Awaitable[None]]  # work done on a thread's own connection


def connect_like(nc: NATS, name: str) -> Connect:
    """A factory for another connection to the same servers with the same credentials as `nc`,
    trying first the server `nc` is connected to, so the two share a network path where they can."""
    current = nc.connected_url.geturl() if nc.connected_url is not None else None
    urls = [u.geturl() for u in nc.servers]
    servers = ",".join(dict.fromkeys([current, *urls] if current else urls))
    public = ("user", "password", "token", "tls", "tls_hostname")
    options: dict[str, Any] = {k: nc.options[k] for k in public if nc.options.get(k)}
    for option in ("user_credentials", "nkeys_seed", "nkeys_seed_str"):  # kept by nats-py as _<option>
        attr = f"_{option}"
        value = getattr(nc, attr, None)
        if value:
            options[option] = value

    async def again() -> NATS:
        return await connect(
            servers, name=name, reconnect_time_wait=0.2, max_reconnect_attempts=-1, dont_randomize=True, **options
        )

    return again


class OnThread:
    """Runs one coroutine on a thread with its own event loop and its own NATS connection.

    `await run(body)` from the main loop returns when `body(nc)` returns or raises (kept in `error`:
    the caller does the work itself instead), or when `stop()` was called; cancelled, it stops the
    thread and waits for it. Either way the thread has ended when `run` returns.
    """

    def __init__(self, connect: Connect, name: str, *, connect_timeout: float) -> None:
        self.connect = connect
        self.name = name
        self.connect_timeout = connect_timeout  # connected by then, or `error` (the caller works itself)
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """From any thread: end the body (cancelled) and the thread; `run` then returns."""
        self._stop.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed: the thread is ending
                loop.call_soon_threadsafe(task.cancel)

    async def run(self, body: Body) -> None:
        main = asyncio.get_running_loop()
        ended = anyio.Event()
        thread = threading.Thread(target=self._main, args=(main, ended, body), name=self.name, daemon=True)
        thread.start()
        try:
            while not self._stop.is_set():  # a stop from elsewhere is also seen to its end
                with anyio.move_on_after(1.0):
                    await ended.wait()
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await self._stopped(thread)

    async def _stopped(self, thread: threading.Thread) -> None:
        """Stop the thread and wait for it, cancelling its body again each second it lives on: a
        cancel can be lost on the way (Python 3.11's `asyncio.wait_for` drops one that arrives with
        the result it awaited, gh-86296), and a lease thread that outlived its stop would renew the
        member's lease, and hold its shutdown, for ever. Bounded: a thread still alive after
        `_STOP_TRIES` seconds is left (a daemon) and said so."""
        for _ in range(_STOP_TRIES):
            self.stop()
            await anyio.to_thread.run_sync(thread.join, 1.0)
            if not thread.is_alive():
                return
        log.error("a cluster thread did not stop; left running", thread=self.name)

    def _main(self, main: asyncio.AbstractEventLoop, ended: anyio.Event, body: Body) -> None:
        try:
            asyncio.run(self._run(body))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which does the work itself instead
            if not self._stop.is_set():
                self.error = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the main loop is gone: nobody to tell
                main.call_soon_threadsafe(ended.set)

    async def _run(self, body: Body) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self._stop.is_set():
            return
        nc: NATS | None = None  # closed below whatever cancels what: a stop, the connect's deadline
        try:
            with anyio.fail_after(self.connect_timeout):  # connected by then, or `error`
                nc = await self.connect()
            await body(nc)
        finally:
            if nc is not None:  # bounded: a cut-off link would hold a drain for nats-py's drain_timeout (30 s)
                await close_within(nc, 1.0, drain=True)


class ThreadRenewer:
    """Renew one held lease from a thread until it lapses (then `on_lost` runs on the main loop)
    or the caller is cancelled (then the thread stops, and `release` may follow)."""

    def __init__(
        self, leases: Leases, held: Held, connect: Connect, bucket: str, alive: Callable[[], bool] = lambda: True
    ) -> None:
        self.leases = leases
        self.alive = alive
        self.bucket = bucket
        self.held = held
        self.connect = connect
        self.error: BaseException | None = None  # the thread could not connect: the caller renews itself

    async def hold(self, on_lost: OnLost) -> None:
        config = self.leases.config
        # connected before the first renewal is due, or the caller renews on its own loop in time
        thread = OnThread(self.connect, f"memoir-lease-{self.held.key}", connect_timeout=config.renew_every)
        await thread.run(self._renew_on)
        self.error = thread.error
        if self.error is None:
            with anyio.CancelScope(shield=True):
                await on_lost()

    async def _renew_on(self, nc: NATS) -> None:
        config = self.leases.config
        kv = await asyncio.wait_for(
            nc.jetstream(timeout=config.request_timeout).key_value(self.bucket), config.renew_every
        )
        await self._renew_forever(Leases(kv, self.leases.holder, config))

    async def _renew_forever(self, mine: Leases) -> None:
        held, config = self.held, self.leases.config
        while True:
            await asyncio.sleep(max(0.0, held.confirmed_at + config.renew_every - time.monotonic()))
            renewed = False
            retry = Backoff(0.05, cap=config.renew_every / 2)
            try:
                async with asyncio.timeout(max(0.0, held.deadline(config) - time.monotonic())):
                    while True:
                        try:
                            if not self.alive():
                                raise ConnectionError("the member's own NATS connection is down")
                            renewed = await mine.renew(held)
                            break
                        except Exception as exc:  # noqa: BLE001 - transient (election, reconnect): retried
                            self.leases.renewal_failures += 1
                            log.debug("lease renewal failed; retrying", key=held.key, reason=describe(exc))
                            await asyncio.sleep(retry.next())
            except TimeoutError:
                renewed = False
            if not renewed:
                held.lost = True  # before anything else: the fence reads it
                log.warning("lease lost", key=held.key, holder=mine.holder)
                return
            self.leases.renewals += 1  # a metric: an increment lost to a race with the main loop is harmless
