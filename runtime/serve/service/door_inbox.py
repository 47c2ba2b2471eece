"""Commands from the NATS socket straight to the door's workers: one queue, not two.

nats-py hands a subscription's messages to its callback through a queue of its own and a task
per subscription; the callback then queued each into the door's worker queue. Two queues, two
task switches per command. An `Inbox` stands in for nats-py's queue on each of the door's
subscriptions (nats-py's read loop calls its `put_nowait` for every message): there the door
takes the message at once, synchronously, into its worker queue, or refuses it. One queue, one
switch: the read loop to the worker that runs the turn.

nats-py drains a subscription by waiting for its queue to be empty; the door's queue is shared
by its subscriptions and its workers serve everything queued before they stop, so `join` here
returns at once (a drain is then: the server told, what it sent before taken, the subscription
gone). nats-py counts a subscription's pending bytes up before `put_nowait` and down when its
task takes a message: here, at once, as the door keeps its own bound.

`installed` says whether nats-py's subscription has the shape this expects (2.x); if not, the
door subscribes with a callback as before, only slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg


class Inbox:
    """Stands in for a nats-py subscription's pending queue; every message goes to `take`."""

    def __init__(self, sub: Any, take: Callable[[Msg], None]) -> None:
        self.sub = sub
        self.take = take

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)  # handed on: not pending in nats-py any more
        self.take(msg)

    async def join(self) -> None:
        """Nothing waits here: what was taken is the door's to serve."""

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def task_done(self) -> None:
        pass


def install(sub: Any, take: Callable[[Msg], None]) -> bool:
    """Put an `Inbox` in place of `sub`'s pending queue (a subscription made without a callback);
    False if nats-py's subscription is not shaped as expected."""
    if not (hasattr(sub, "_pending_queue") and isinstance(getattr(sub, "_pending_size", None), int)):
        return False
    sub._pending_queue = Inbox(sub, take)
    return True
