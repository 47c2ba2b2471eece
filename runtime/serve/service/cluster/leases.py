"""Expiring leases in a NATS KV bucket: at most one holder per key at a time.

Expiry scheme: no clock is compared across machines. The bucket has no TTL; a lease's
value names its holder (and, for people reading it, wall-clock times), and its KV revision
changes on every renewal. Each side measures time with its own monotonic clock:

- The holder renews every ttl/3 with `update(last=revision)`. It counts from the moment it
  *sent* its last successful write (the write committed no earlier), and once
  `ttl - margin` has passed without another success it stops serving (`on_lost` is awaited)
  and forgets the lease.
- A taker records when it first *received* each revision (the revision committed no later),
  and takes the lease only after it has seen the same revision for a full `ttl`, with
  `update(last=that revision)`: the server refuses it if the holder renewed meanwhile.

So a taker succeeds no earlier than commit + ttl, while the holder stopped by
send + ttl - margin <= commit + ttl - margin. The margin absorbs clock-rate drift,
scheduling delay and the time `on_lost` takes. A bucket or per-message TTL would let the
server expire leases, but then the server's clock and the holder's clock decide together,
and an expiry can land before the holder's deadline if the write was slow to commit.

A graceful release deletes the key with a revision check, so a successor takes it at once.
A free key (never written, or deleted) is taken with `create`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from ....model.backoff import Backoff
from ....model.errors import ConfigError
from .changes import Changes
from .store import Entry, describe, is_deleted, is_wrong_last, watch_forever
from .store import revision as entry_revision

log = structlog.get_logger("memoir.cluster")

OnLost = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class LeaseConfig:
    """ttl: seconds a silent holder keeps a lease; margin: how much earlier it stops serving."""

    ttl: float = 3.0
    margin: float | None = None  # default ttl / 4

    def __post_init__(self) -> None:
        if self.ttl <= 0:
            raise ConfigError(f"lease ttl must be positive, got {self.ttl}")
        if not 0 < self.safety_margin < self.ttl * 2 / 3:
            raise ConfigError(f"lease margin must be between 0 and 2/3 of the ttl ({self.ttl}), got {self.margin}")

    @property
    def safety_margin(self) -> float:
        return self.ttl / 4 if self.margin is None else self.margin

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def request_timeout(self) -> float:
        """One KV request's wait: short enough to retry a few times before the deadline."""
        return max(0.2, min(5.0, self.ttl / 6))


class LeaseValue(msgspec.Struct, frozen=True):
    """What a lease key holds. Times are wall-clock seconds, for people: nobody decides by them."""

    owner: str
    ttl: float
    acquired_at: float
    renewed_at: float
    expires_at: float
    n: int = 0  # the holder's write counter: recognizes its own write whose answer was lost


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LeaseValue).decode


def decode(data: bytes | None) -> LeaseValue | None:
    try:
        return _decode(data or b"")
    except msgspec.DecodeError:
        return None


def decode_held(data: bytes | None) -> LeaseValue:
    """A present key is held by someone, even if its value cannot be read: it is waited out."""
    return decode(data) or LeaseValue("<unreadable>", 0.0, 0.0, 0.0, 0.0)


@dataclass
class Held:
    """A lease this process holds."""

    key: str
    revision: int
    confirmed_at: float  # monotonic: when the last successful write was sent
    acquired_at: float  # wall clock
    n: int
    attempts: dict[int, float] = field(default_factory=dict)  # n -> monotonic send time, unanswered
    lost: bool = False

    def deadline(self, config: LeaseConfig) -> float:
        return self.confirmed_at + config.ttl - config.safety_margin


@dataclass
class Seen:
    """What this process last saw of a key, and since when (its own monotonic clock)."""

    revision: int
    owner: str | None  # None: deleted or unreadable
    since: float
    renewed_at: float = 0.0  # wall clock, from the value


class Leases:
    """The leases of one bucket as seen and held by one holder (a member id)."""

    def __init__(self, kv: KeyValue, holder: str, config: LeaseConfig, *, changes: Changes | None = None) -> None:
        self.kv = kv
        self.holder = holder
        self.config = config
        self.seen: dict[str, Seen] = {}
        self.changes = Changes(changes)  # fired on owner changes
        self.renewals = 0
        self.renewal_failures = 0

    # -- observing -----------------------------------------------------------------------

    def observe(self, key: str, revision: int, value: LeaseValue | None) -> None:
        old = self.seen.get(key)
        if old is not None and old.revision >= revision:
            return  # the same revision seen again (a restarted watch): keep the earlier time
        owner = value.owner if value is not None else None
        self.seen[key] = Seen(revision, owner, time.monotonic(), value.renewed_at if value else 0.0)
        if old is None or old.owner != owner:
            self.changes.fire()

    def on_entry(self, entry: Entry) -> None:
        self.observe(entry.key, entry_revision(entry), None if is_deleted(entry) else decode_held(entry.value))

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep `seen` current; quiet for a whole ttl means a lost consumer (holders renew more often)."""
        await watch_forever(self.kv, self.on_entry, quiet=self.config.ttl, what="leases", task_status=task_status)

    async def wait_changed(self, timeout: float) -> None:
        """Until a lease changes owner or is released, or `timeout`."""
        await self.changes.wait(timeout)

    async def refresh(self, key: str) -> Seen | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            if exc.entry is not None:  # deleted: the tombstone's revision
                self.observe(key, entry_revision(exc.entry), None)
            return self.seen.get(key)
        self.observe(key, entry_revision(entry), decode_held(entry.value))
        return self.seen.get(key)

    def owner(self, key: str) -> str | None:
        seen = self.seen.get(key)
        return seen.owner if seen is not None else None

    # -- taking, renewing, releasing --------------------------------------------------------

    def _value(self, acquired_at: float, n: int) -> bytes:
        now = time.time()
        return _encode(LeaseValue(self.holder, self.config.ttl, acquired_at, now, now + self.config.ttl, n))

    async def try_take(self, key: str) -> Held | None:
        """One attempt: a free lease is created, a silent one (same revision for a whole ttl by
        this clock) or one of this holder's own is taken over; else None. Transient NATS errors raise."""
        seen = self.seen.get(key)
        if seen is None or seen.owner in (None, self.holder) or time.monotonic() - seen.since >= self.config.ttl:
            return await self.write(key, seen)
        return None

    async def write(self, key: str, over: Seen | None) -> Held | None:
        """Name this holder in `key`, by compare-and-set over what was seen there (`create` if it
        was free); None if someone wrote it since (then it is read again). Transient NATS errors raise."""
        acquired_at = time.time()
        sent = time.monotonic()
        try:
            if over is None or over.owner is None:
                revision = await self.kv.create(key, self._value(acquired_at, 1))
            else:
                revision = await self.kv.update(key, self._value(acquired_at, 1), last=over.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            await self.refresh(key)  # someone wrote since: start the clock on what is there now
            return None
        self.observe(key, revision, LeaseValue(self.holder, self.config.ttl, acquired_at, acquired_at, 0.0, 1))
        return Held(key, revision, sent, acquired_at, 1)

    async def renew(self, held: Held) -> bool:
        """True: renewed. False: someone else holds it now. Transient NATS errors raise."""
        n = held.n + 1
        sent = time.monotonic()
        held.attempts[n] = sent
        try:
            revision = await self.kv.update(held.key, self._value(held.acquired_at, n), last=held.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # maybe an earlier attempt of ours committed and only its answer was lost
            try:
                entry = await self.kv.get(held.key)
            except nats.js.errors.KeyNotFoundError:
                return False
            value = decode(entry.value)
            if value is None or value.owner != self.holder or value.n not in held.attempts:
                return False
            revision, n, sent = entry_revision(entry), value.n, held.attempts[value.n]
        held.revision, held.n, held.confirmed_at = revision, n, sent
        held.attempts.clear()
        self.renewals += 1
        return True

    async def fence(self, key: str) -> bool:
        """Delete another holder's lease once it has been silent for a whole ttl by this clock,
        with a revision check: its holder stopped serving by its own deadline, and can never
        renew this revision again. True: the key is free now (deleted here or already)."""
        seen = self.seen.get(key)
        if seen is None or seen.owner is None:
            return True
        if seen.owner == self.holder or time.monotonic() - seen.since < self.config.ttl:
            return False
        try:
            await self.kv.delete(key, last=seen.revision)
        except Exception as exc:
            if not is_wrong_last(exc):
                raise
            fresh = await self.refresh(key)  # renewed meanwhile (alive), or deleted by another taker
            return fresh is None or fresh.owner is None
        self.seen[key] = Seen(seen.revision, None, time.monotonic())
        self.changes.fire()
        log.info("silent lease fenced", key=key, holder=seen.owner, by=self.holder)
        return True

    async def hold(self, held: Held, on_lost: OnLost, *, fenced: bool = False) -> None:
        """Renew `held` until it is lost, then await `on_lost` (by the deadline, before anyone
        else can take it) and return. Cancel it to stop renewing (then `release`).

        `fenced`: the caller refuses work by `held.deadline` itself (the shard fence), so how
        long `on_lost` takes is only tidying, not safety."""
        config = self.config
        while True:
            await anyio.sleep(max(0.0, held.confirmed_at + config.renew_every - time.monotonic()))
            renewed = False
            retry = Backoff(0.05, cap=config.renew_every / 2)
            with anyio.move_on_after(held.deadline(config) - time.monotonic()):
                while True:
                    try:
                        renewed = await self.renew(held)
                        break
                    except Exception as exc:  # noqa: BLE001 - transient (election, reconnect): retried
                        self.renewal_failures += 1
                        log.debug("lease renewal failed; retrying", key=held.key, reason=describe(exc))
                        await retry.sleep()
            if not renewed:
                held.lost = True
                left = held.confirmed_at + config.ttl - time.monotonic()
                log.warning("lease lost", key=held.key, holder=self.holder, seconds_before_expiry=round(left, 3))
                started = time.monotonic()
                with anyio.CancelScope(shield=True):
                    await on_lost()
                took = time.monotonic() - started
                if took > config.safety_margin and not fenced:
                    log.error("on_lost took longer than the lease margin", key=held.key, seconds=round(took, 3))
                return

    async def release(self, held: Held, timeout: float = 2.0) -> bool:
        """Delete the lease (it must not be renewing any more), so a successor takes it at once.
        False if it could not: then it expires by itself after the ttl."""
        if held.lost:
            return False
        held.lost = True
        with anyio.move_on_after(timeout):
            while True:
                try:
                    await self.kv.delete(held.key, last=held.revision)
                    return True
                except Exception as exc:  # noqa: BLE001 - a revision conflict, or transient: retried
                    if not is_wrong_last(exc):
                        log.debug("lease release failed; retrying", key=held.key, reason=describe(exc))
                        await anyio.sleep(0.1)
                        continue
                # a renewal cancelled in flight may have committed: delete that one if it is ours
                try:
                    entry = await self.kv.get(held.key)
                except nats.js.errors.KeyNotFoundError:
                    return True
                except Exception as exc:  # noqa: BLE001 - transient: retried until the timeout
                    log.debug("lease release failed; retrying", key=held.key, reason=describe(exc))
                    await anyio.sleep(0.1)
                    continue
                value = decode(entry.value)
                if value is None or value.owner != self.holder:
                    return True
                held.revision = entry_revision(entry)
        log.warning("lease not released; it expires by itself", key=held.key)
        return False

    async def acquire(self, key: str) -> Held:
        """Wait until this holder has the lease (polling at ttl/6, and at once when it is released)."""
        while True:
            try:
                held = await self.try_take(key)
            except Exception as exc:  # noqa: BLE001 - transient: retried
                log.debug("lease take failed; retrying", key=key, reason=describe(exc))
                held = None
            if held is not None:
                return held
            await self.wait_changed(self.config.ttl / 6)


def member_key(member: str) -> str:
    """The key of a member's own lease: its shards are served only while it is renewed."""
    return f"member.{member}"
