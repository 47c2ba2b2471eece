"""Live queries: a query's current result, then every change to it, with no gap and no double.

The view's runner knows which keys each committed batch wrote; after the commit, still holding
the lock its batches take, it hands the batch to every subscriber (`Changes.publish`). A live
query subscribes and reads its snapshot under that same lock, so the snapshot holds exactly the
batches published before the subscription and none after. Each batch carries the view's version
(one more per committed batch, stored with the rows), which is also what the NATS notices carry.

A subscriber's buffer is bounded: one that falls behind is cut off and told `Resync` (take a
new snapshot) rather than silently losing changes. A rebuild is a batch that empties the view:
every row of the result is `removed`, then `added` again as history is re-applied.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .query import Where, matches

R = TypeVar("R")

VERSION = "@version"  # the checkpoint that counts a view's committed batches


@dataclass(frozen=True, slots=True)
class Batch:
    """What one committed batch wrote: rows by key (None: deleted); `reset`: the view was emptied first."""

    version: int
    writes: Mapping[str, bytes | None]
    reset: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[R]):
    """The query's result when the subscription began, at `version`."""

    rows: dict[str, R]
    version: int


@dataclass(frozen=True, slots=True)
class Change(Generic[R]):
    """A row that entered (`added`), changed in (`changed`) or left (`removed`, row None) the result."""

    kind: Literal["added", "changed", "removed"]
    key: str
    row: R | None
    version: int


@dataclass(frozen=True, slots=True)
class Resync:
    """The subscriber fell behind and changes were dropped: subscribe again for a fresh snapshot."""

    reason: str


Event = Snapshot[R] | Change[R] | Resync


@dataclass(eq=False)
class _Subscriber:
    send: MemoryObjectSendStream[Batch]
    cut_off: str | None = field(default=None)  # why it was cut off: its last event is Resync(this)


class Changes:
    """The batches a view commits, fanned out to its live queries (bounded buffer each)."""

    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        self._subs: set[_Subscriber] = set()

    def publish(self, batch: Batch) -> None:
        """Hand a committed batch to every subscriber; one whose buffer is full is cut off (Resync)."""
        for sub in list(self._subs):
            try:
                sub.send.send_nowait(batch)
            except anyio.WouldBlock:
                self._cut_off(sub, f"more than {self.buffer} batches behind: changes were dropped")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subs.discard(sub)

    def end(self, reason: str) -> None:
        """Cut every subscriber off with `Resync(reason)`: batches were committed that this process
        did not publish (another member ran the view meanwhile)."""
        for sub in list(self._subs):
            self._cut_off(sub, reason)

    def _cut_off(self, sub: _Subscriber, reason: str) -> None:
        sub.cut_off = reason
        self._subs.discard(sub)
        sub.send.close()

    def subscribe(self) -> tuple[_Subscriber, MemoryObjectReceiveStream[Batch]]:
        send, receive = anyio.create_memory_object_stream[Batch](self.buffer or math.inf)
        sub = _Subscriber(send)
        self._subs.add(sub)
        return sub, receive

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._subs.discard(sub)
        sub.send.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)


def diff(where: Where | None, batch: Batch, result: dict[str, bytes], decode: Callable[[bytes], R]) -> list[Change[R]]:
    """The changes `batch` makes to a result (its rows' bytes by key, updated in place)."""
    out: list[Change[R]] = []
    if batch.reset:
        out.extend(Change("removed", key, None, batch.version) for key in sorted(result))
        result.clear()
    for key in sorted(batch.writes):
        data = batch.writes[key]
        inside = data is not None and matches(where, key, msgspec.json.decode(data))
        if key in result and not inside:
            del result[key]
            out.append(Change("removed", key, None, batch.version))
        elif inside and data is not None and result.get(key) != data:
            kind: Literal["added", "changed"] = "changed" if key in result else "added"
            result[key] = data
            out.append(Change(kind, key, decode(data), batch.version))
    return out


@contextlib.asynccontextmanager
async def live(
    changes: Changes,
    lock: anyio.Lock,
    snapshot: Callable[[], Any],
    version: Callable[[], int],
    where: Where | None,
    decode: Callable[[bytes], R],
) -> AsyncIterator[AsyncIterator[Event[R]]]:
    """Subscribe under `lock` (the runner's), read the snapshot's raw rows, then yield its events."""
    async with lock:
        sub, receive = changes.subscribe()
        try:
            raw: dict[str, bytes] = await snapshot()
        except BaseException:
            changes.unsubscribe(sub)
            raise
        at = version()

    async def events() -> AsyncIterator[Event[R]]:
        yield Snapshot({k: decode(v) for k, v in raw.items()}, at)
        async for batch in receive:
            for change in diff(where, batch, raw, decode):
                yield change
        if sub.cut_off is not None:
            yield Resync(sub.cut_off)

    try:
        with receive:
            yield events()
    finally:
        changes.unsubscribe(sub)


__all__ = ["VERSION", "Batch", "Change", "Changes", "Event", "Resync", "Snapshot", "diff", "live"]
