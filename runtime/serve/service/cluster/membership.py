"""Who is in the cluster: members heartbeat into a KV bucket and watch each other's heartbeats.

Liveness goes by this process's own clock, as leases do: a member is live while its key has
changed within `ttl` of when this process last saw it change. A member that leaves
gracefully deletes its key, which every watcher sees at once. A member silent for two ttls
(by the clock of whoever notices) has its key deleted by a live one, with a revision check so a
heartbeat that lands first keeps it: `memoir cluster` stops listing a dead member within about
two ttls. The bucket's TTL only collects keys when no member is left to do that.
Membership decides only where shards *should* go; leases alone decide who serves them.

The heartbeat runs on a thread of its own with its own NATS connection (renewer.py's `OnThread`,
as the member lease's renewal does), so a member whose event loop is saturated by commands still
counts itself and is counted live; the loop only reads the send time of the last heartbeat (a
float, written whole under the GIL) and reaps. It beats only while the member's own connection is
up (`alive`), and stops, joined, before `leave` deletes the key, so no late beat brings it back.
Without a `connect` (or if the thread cannot connect) it beats on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from ....model.backoff import Backoff
from .changes import Changes
from .renewer import Connect, OnThread
from .store import Entry, describe, is_deleted, revision, safe_key, watch_forever

log = structlog.get_logger("memoir.cluster")


def new_member_id(name: str | None = None) -> str:
    """host-pid-random: unique per process start, so a restarted process is a new member
    and can never mistake its predecessor's leases for its own."""
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    return safe_key(f"{base}-{os.urandom(3).hex()}")


class MemberInfo(msgspec.Struct, frozen=True):
    id: str
    host: str
    pid: int
    started_at: float  # wall clock
    heartbeat_at: float  # wall clock
    meta: dict[str, str] = {}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(MemberInfo).decode


@dataclass
class _Seen:
    revision: int
    since: float  # monotonic, this process's clock
    info: MemberInfo | None


class Membership:
    """This member's heartbeat and its view of the others. `heartbeat` and `watch` in a task group;
    `leave` to go. With `connect` (and `bucket`, the KV's name) the heartbeat runs on a thread."""

    def __init__(
        self,
        kv: KeyValue,
        member_id: str,
        *,
        ttl: float,
        meta: dict[str, str] | None = None,
        bucket: str | None = None,
        connect: Connect | None = None,
        alive: Callable[[], bool] = lambda: True,
        changes: Changes | None = None,
    ) -> None:
        self.kv = kv
        self.id = member_id
        self.ttl = ttl
        self.meta = dict(meta or {})
        self.bucket = bucket
        self.connect = connect if bucket is not None else None
        self.alive = alive  # whether the member's own connection is up: the thread beats only then
        self._thread: OnThread | None = None
        self._thread_ended = anyio.Event()
        self.started_at = time.time()
        self._seen: dict[str, _Seen] = {}
        self._last_beat: float | None = None  # monotonic send time of the last successful heartbeat
        self.changes = Changes(changes)  # fired on joins and graceful leaves
        self._leaving = False
        self._announced = False
        self.heartbeat_failures = 0

    def _info(self) -> bytes:
        return _encode(MemberInfo(self.id, socket.gethostname(), os.getpid(), self.started_at, time.time(), self.meta))

    def _on_entry(self, entry: Entry) -> None:
        if is_deleted(entry):
            if self._seen.pop(entry.key, None) is not None:
                self.changes.fire()
            return
        old = self._seen.get(entry.key)
        if old is not None and old.revision >= revision(entry):
            return
        try:
            info: MemberInfo | None = _decode(entry.value or b"")
        except msgspec.DecodeError:
            info = None
        self._seen[entry.key] = _Seen(revision(entry), time.monotonic(), info)
        if old is None:
            self.changes.fire()

    def live(self) -> frozenset[str]:
        """Members heard from within the ttl; this one while its own heartbeats succeed."""
        now = time.monotonic()
        out = {key for key, seen in self._seen.items() if now - seen.since < self.ttl and key != self.id}
        if not self._leaving and self._last_beat is not None and now - self._last_beat < self.ttl:
            out.add(self.id)
        return frozenset(out)

    def info(self, member: str) -> MemberInfo | None:
        seen = self._seen.get(member)
        return seen.info if seen is not None else None

    async def beat(self, kv: KeyValue | None = None) -> bool:
        """One heartbeat, through `kv` (the thread's) or the member's own; False if it failed."""
        sent = time.monotonic()
        try:
            if not self.alive():
                raise ConnectionError("the member's own NATS connection is down")
            await (kv or self.kv).put(self.id, self._info())
        except Exception as exc:  # noqa: BLE001 - transient: the next beat retries
            self.heartbeat_failures += 1
            log.debug("heartbeat failed", member=self.id, reason=describe(exc))
            return False
        self._last_beat = sent
        return True

    async def heartbeat(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat every ttl/3 until `leave`; started once the first heartbeat is in.

        Separate from `watch`: a member watches from the start, but is seen (and given shards)
        only from its first heartbeat.
        """
        self._announced = True
        if self.connect is not None:
            thread = self._thread = OnThread(self.connect, f"memoir-heartbeat-{self.id}", connect_timeout=self.ttl)
            started = False
            try:
                started = await self._heartbeat_on_thread(thread, task_status)
            finally:
                self._thread_ended.set()
            if thread.error is None or self._leaving:
                return  # stopped by `leave`
            log.warning("heartbeat thread failed; heartbeating on the event loop", reason=describe(thread.error))
            if started:
                task_status = anyio.TASK_STATUS_IGNORED
        await self._heartbeat_on_loop(task_status)

    async def _heartbeat_on_thread(self, thread: OnThread, task_status: anyio.abc.TaskStatus[None]) -> bool:
        """Until the thread ends (`leave`, or an error): the loop waits for the first beat, then reaps.
        Returns whether it reported the task started."""
        joined = anyio.Event()
        started = False
        main = asyncio.get_running_loop()

        async def beats(nc: NATS) -> None:  # on the thread
            timeout = max(0.2, min(5.0, self.ttl / 6))  # a retry fits within the ttl
            kv = await asyncio.wait_for(nc.jetstream(timeout=timeout).key_value(self.bucket or ""), self.ttl)
            retry = Backoff(0.05, cap=self.ttl / 3)
            while not self._leaving:
                if not await self.beat(kv):
                    await asyncio.sleep(retry.next())
                    continue
                retry.reset()
                if not joined.is_set():
                    with contextlib.suppress(RuntimeError):  # the main loop is gone
                        main.call_soon_threadsafe(joined.set)
                await asyncio.sleep(self.ttl / 3)

        async with anyio.create_task_group() as tg:

            async def run_thread() -> None:
                await thread.run(beats)
                tg.cancel_scope.cancel()

            tg.start_soon(run_thread)
            await joined.wait()
            log.info("member joined", member=self.id, members=sorted(self.live()), heartbeat="thread")
            task_status.started()
            started = True
            while True:
                await anyio.sleep(self.ttl / 3)
                if self.id in self.live():
                    await self.reap()
        return started

    async def _heartbeat_on_loop(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        retry = Backoff(0.05, cap=self.ttl / 3)
        while not await self.beat():  # started only once we are visible
            await retry.sleep()
        log.info("member joined", member=self.id, members=sorted(self.live()))
        task_status.started()
        while not self._leaving:
            await anyio.sleep(self.ttl / 3)
            if not self._leaving and await self.beat():
                await self.reap()

    async def reap(self) -> None:
        """Delete the keys of members silent for two ttls (revision-checked: a late heartbeat wins)."""
        now = time.monotonic()
        for key, seen in list(self._seen.items()):
            if key == self.id or now - seen.since < 2 * self.ttl:
                continue
            try:
                await self.kv.delete(key, last=seen.revision)
            except Exception as exc:  # noqa: BLE001 - it beat meanwhile, another reaped it, or transient
                log.debug("member reap failed", member=key, reason=describe(exc))
                continue
            if self._seen.get(key) is seen:
                del self._seen[key]
            log.info("silent member removed", member=key, by=self.id)

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the others' heartbeats; started once the current members are known."""
        # quiet for a whole ttl is a lost consumer: members heartbeat every ttl/3 (with none
        # announced yet it is only quiet, and a restart costs one consumer)
        await watch_forever(self.kv, self._on_entry, quiet=self.ttl, what="members", task_status=task_status)

    async def leave(self, timeout: float = 2.0) -> None:
        """Stop heartbeating and delete this member's key, so the others rebalance now, not after the ttl."""
        if self._leaving:
            return
        self._leaving = True
        self.changes.fire()
        if not self._announced:
            return  # never seen: nothing to delete
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            if self._thread is not None:  # no beat of its may land after the delete
                self._thread.stop()
                await self._thread_ended.wait()
            while True:
                try:
                    await self.kv.delete(self.id)
                    break
                except Exception as exc:  # noqa: BLE001 - transient: retried until the timeout
                    log.debug("member delete failed; retrying", member=self.id, reason=describe(exc))
                    await anyio.sleep(0.1)
        log.info("member left", member=self.id)
