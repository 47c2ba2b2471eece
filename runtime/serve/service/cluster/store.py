"""The NATS KV plumbing the cluster modules share: buckets created through leader elections,
and watches that restart themselves.

A KV request can fail for a while on a healthy cluster (a stream leader election, a node
restarting, a reconnect): every caller here treats those as "try again", and only a
revision conflict (someone else wrote) or a missing key as an answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import cast

import anyio
import anyio.abc
import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ....model.backoff import Backoff
from ....model.errors import ConfigError, MemoirError

log = structlog.get_logger("memoir.cluster")

Entry = KeyValue.Entry
_BUCKET = re.compile(r"^[a-zA-Z0-9_-]+$")
_KEY_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9]")


def bucket_name(prefix: str, what: str) -> str:
    name = f"{prefix}_{what}"
    if not _BUCKET.match(name):
        raise ConfigError(f"cluster name {prefix!r} cannot name a NATS KV bucket: use letters, digits, - and _")
    return name


def safe_key(text: str) -> str:
    """A KV key token from free text (a host name, say): anything NATS would refuse becomes '-'."""
    return _KEY_UNSAFE.sub("-", text) or "-"


def revision(entry: Entry) -> int:
    return entry.revision or 0


async def _next(watcher: KeyValue.KeyWatcher, timeout: float) -> Entry | None:
    updates = cast(Callable[[float], Awaitable[Entry | None]], watcher.updates)
    return await updates(timeout)


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    await cast(Callable[[], Awaitable[None]], watcher.stop)()


def is_wrong_last(exc: BaseException) -> bool:
    """A revision check failed: someone wrote since. (`update` raises KeyWrongLastSequenceError
    for it, `delete` the bare API error.)"""
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in (10071, 10164)


def is_deleted(entry: Entry) -> bool:
    return entry.operation in (KV_DEL, KV_PURGE)


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    *,
    replicas: int,
    ttl: float | None = None,
    timeout: float = 30.0,
) -> KeyValue:
    """Open the bucket, or create it; retried with backoff while the cluster elects leaders or
    another member creates it at the same moment, then one clear error."""
    retry, deadline, last = Backoff(0.1, cap=2.0), time.monotonic() + timeout, "no attempt"
    while True:
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, 10008: an election
            last = describe(exc)
        try:
            config = KeyValueConfig(bucket=bucket, history=1, replicas=replicas, ttl=ttl, storage=StorageType.FILE)
            return await js.create_key_value(config)
        except Exception as exc:  # noqa: BLE001 - a concurrent creator (10058) is retried as an open
            last = describe(exc)
        delay = retry.next()
        if time.monotonic() + delay > deadline:
            raise MemoirError(f"cannot open or create the NATS KV bucket {bucket} ({replicas} replicas): {last}")
        log.info("cluster bucket not ready; retrying", bucket=bucket, reason=last)
        await anyio.sleep(delay)


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


OnEntry = Callable[[Entry], None]


async def watch_forever(
    kv: KeyValue,
    on_entry: OnEntry,
    *,
    quiet: float,
    what: str,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Feed every update of the bucket to `on_entry`, restarting the watch when it fails or
    has been silent for `quiet` seconds (its callers expect traffic more often than that, so
    silence means a consumer lost in a server restart). `task_status.started()` once the
    current values have been delivered."""
    started = False
    retry = Backoff(0.1, cap=2.0)
    while True:
        try:
            watcher = await kv.watchall()
        except Exception as exc:  # noqa: BLE001 - transient: retried
            log.info("cluster watch cannot start; retrying", what=what, reason=describe(exc))
            await retry.sleep()
            continue
        retry.reset()
        try:
            while True:
                try:
                    entry = await _next(watcher, quiet)
                except nats.errors.TimeoutError:
                    log.debug("cluster watch quiet; restarting", what=what)
                    break
                if entry is None:  # the current values are all in
                    if not started:
                        started = True
                        task_status.started()
                    continue
                on_entry(entry)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await _stop(watcher)
                except Exception:  # noqa: BLE001 - the connection may be gone
                    log.debug("cluster watch stop failed", what=what)


async def read_all(kv: KeyValue, timeout: float = 3.0) -> list[Entry]:
    """Every live key's latest entry (with its server timestamp), for snapshots.

    The watch's "no more pending" marker can come before the first value on a busy bucket, so
    this reads until it has as many keys as the bucket holds messages (history is 1), or the
    timeout passes."""
    expected = (await kv.status()).values
    out: dict[str, Entry] = {}
    watcher = await kv.watchall()
    try:
        with anyio.move_on_after(timeout):
            while len(out) < expected:
                try:
                    entry = await _next(watcher, timeout)
                except nats.errors.TimeoutError:
                    break
                if entry is not None:
                    out[entry.key] = entry
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await _stop(watcher)
    return [e for e in out.values() if not is_deleted(e)]
