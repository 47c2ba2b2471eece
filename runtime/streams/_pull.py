"""A durable JetStream pull consumer on one entity type's events, fetched in batches until cancelled.

The events are in the type's own stream (the outbox's) or in the JetStream journal's
stream; either way the consumer filters on `{prefix}.events.{type}.*`.

Views and consumers both read events this way; they differ only in what they do
with a batch and how they acknowledge it. A batch interrupted by a shutdown is
nak'ed so it is redelivered at once; one held by a process that died comes
back after `ack_wait` (10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from ..model.backoff import Backoff
from ..wire.protocol import H_POSITION, events_filter

log = structlog.get_logger("memoir.subscription")

Handle = Callable[[list[Msg]], Awaitable[None]]


class PullError(NatsError):
    """The server ended a pull request with an error status (409: consumer deleted, too many waiting, …)."""


class Puller:
    """Pull requests of our own, answered on a callback subscription.

    nats-py's `fetch()` spends a task, a uuid4 and an `asyncio.wait_for` on every message it
    returns; for a view catching up on a stream that is most of the cost. Here a batch is one
    pull request whose messages are appended to a list by the subscription's callback until
    the batch is full or the server says there is no more (status 404, or 408 when a long poll
    expires). Messages that arrive after their request gave up waiting are still this
    consumer's deliveries, in order: the next fetch returns them first, never drops them
    (with AckAll, acknowledging a later message would acknowledge them unseen).
    """

    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        self.nc = nc
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._sub: Any = None
        self._msgs: list[Msg] = []
        self._want = 0
        self._status: tuple[str, str] | None = None
        self._done = asyncio.Event()
        self._ahead = False  # a request sent before the last batch was handled, not yet collected

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def stop(self) -> list[Msg]:
        """Unsubscribe; returns deliveries nobody fetched, for the caller to hand back."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        left, self._msgs = self._msgs, []
        return left

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.data and msg.headers and "Status" in msg.headers:
            status = msg.headers["Status"]
            if status == "100":  # idle heartbeat
                return
            self._status = (status, msg.headers.get("Description", ""))
            self._done.set()
            return
        self._msgs.append(msg)
        if len(self._msgs) >= self._want:
            self._done.set()

    async def fetch(self, batch: int, idle_timeout: float, *, ahead: bool = False) -> list[Msg]:
        """Whatever is ready now (up to `batch`), else wait up to `idle_timeout` for one message.

        `ahead`: a full batch asks for the next one before it is returned, so the server sends it
        while this one is handled (a view catching up; its redeliveries are checked by sequence)."""
        if self._ahead:
            self._ahead = False
            msgs = await self._collect(5.0)
        elif self._msgs:  # late deliveries of an earlier request: first in line
            msgs, self._msgs = self._msgs, []
        else:
            msgs = await self._request({"batch": batch, "no_wait": True}, 5.0)
        if msgs:
            if ahead and len(msgs) >= batch:
                await self._send({"batch": batch, "no_wait": True})
                self._ahead = True
            return msgs
        return await self._request({"batch": 1, "expires": int(idle_timeout * 1e9)}, idle_timeout + 5.0)

    async def _send(self, request: dict[str, Any]) -> None:
        self._want, self._status = len(self._msgs) + request["batch"], None
        self._done = asyncio.Event()
        await self.nc.publish(self.api, json.dumps(request).encode(), reply=self.inbox)

    async def _request(self, request: dict[str, Any], timeout: float) -> list[Msg]:
        await self._send(request)
        return await self._collect(timeout)

    async def _collect(self, timeout: float) -> list[Msg]:
        with anyio.move_on_after(timeout):
            await self._done.wait()
        msgs, status, self._msgs = self._msgs, self._status, []
        if status is not None and status[0] not in ("404", "408") and not msgs:
            raise PullError(f"pull from {self.api}: {status[0]} {status[1]}")
        return msgs


def stream_sequence(msg: Msg) -> int:
    """A delivered message's stream sequence, read off its ack subject
    (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…`) without building nats-py's
    `Metadata` (a datetime and three objects per message); other forms go the long way."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


async def first_above(js: Any, stream: str, position: int) -> int:
    """The stream sequence of the first message whose `Memoir-Position` is above `position` (the
    last sequence + 1 if none is): where a view that has applied every event up to `position` (from
    the journal) picks up the stream. A binary search with message gets (a few dozen at most); it
    relies on what the outbox keeps, positions increasing along each stream. A message without
    the header is a ValueError."""
    info = await js.stream_info(stream)
    lo, hi = max(1, int(info.state.first_seq)), int(info.state.last_seq) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            msg = await js.get_msg(stream, seq=mid, subject=">", next=True)  # the first at or after mid
        except NotFoundError:
            hi = mid
            continue
        found = int((msg.headers or {}).get(H_POSITION, 0))
        if not found:
            raise ValueError(f"{stream} #{msg.seq} carries no {H_POSITION}")
        if found > position:
            hi = mid
        else:
            lo = int(msg.seq) + 1
    return lo


async def _nak_unacked(msgs: list[Msg]) -> None:
    for msg in msgs:
        if not msg.is_acked:
            try:
                await msg.nak()
            except (NatsError, JetStreamError):
                return  # the connection is gone; the server redelivers after ack_wait


def consumer_name(owner: str, entity_type: str) -> str:
    return f"{owner}__{entity_type}"


async def delete_durable(js: Any, stream: str, entity_type: str, owner: str) -> None:
    """Forget a durable consumer's position (a view being rebuilt starts again at the stream's start)."""
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, consumer_name(owner, entity_type))


async def pull_loop(
    js: Any,
    *,
    prefix: str,
    stream: str,
    entity_type: str,
    owner: str,
    handle: Handle,
    ack_policy: api.AckPolicy = api.AckPolicy.ALL,
    batch: int = 500,
    max_ack_pending: int = 10_000,
    ack_wait: float = 10.0,
    fetch_timeout: float = 2.0,  # an idle pull's wait on the server: a message is delivered at once whatever it is
    start_seq: int | None = None,
    ahead: bool = False,
    nc: NATS,
) -> None:
    """Fetch and handle batches forever; connection trouble is logged and retried, never fatal.

    `nc` is the connection `js` came from (the pull requests are our own, see `Puller`).

    With `start_seq` the durable consumer is recreated to start there: a view passes the
    position after its own checkpoint, so what the server thinks was acknowledged (AckAll
    acknowledges everything below, including messages a dead process held) never decides
    what the view sees. `ahead`: ask for the next batch while one is handled (`Puller.fetch`).
    """
    config = api.ConsumerConfig(
        durable_name=consumer_name(owner, entity_type),
        deliver_policy=api.DeliverPolicy.ALL if start_seq is None else api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_policy=ack_policy,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        filter_subject=events_filter(prefix, entity_type),
    )
    await _ensure_consumer(js, stream, config, owner=owner, restart=start_seq is not None)
    puller = Puller(nc, stream, consumer_name(owner, entity_type))
    await puller.start()
    try:
        await _fetch_and_handle(
            puller, handle, batch=batch, fetch_timeout=fetch_timeout, stream=stream, owner=owner, ahead=ahead
        )
    finally:
        with anyio.CancelScope(shield=True):
            await _nak_unacked(await puller.stop())


async def _ensure_consumer(js: Any, stream: str, config: api.ConsumerConfig, *, owner: str, restart: bool) -> None:
    """Create the durable consumer (first deleting it when `restart`), waiting for its stream to exist."""
    assert config.durable_name is not None
    retry = Backoff(0.1, cap=2.0)
    while True:
        try:
            if restart:
                with contextlib.suppress(NotFoundError):
                    await js.delete_consumer(stream, config.durable_name)
            try:
                await js.consumer_info(stream, config.durable_name)
            except NotFoundError:
                await js.add_consumer(stream, config=config)
            return
        except (NatsError, JetStreamError) as exc:  # the stream may not exist yet: the publisher makes it
            log.info("waiting for stream", stream=stream, owner=owner, error=str(exc))
            await retry.sleep()


async def _fetch_and_handle(
    puller: Puller, handle: Handle, *, batch: int, fetch_timeout: float, stream: str, owner: str, ahead: bool = False
) -> None:
    """Fetch batches and hand each to `handle`; a failed fetch is retried, a failed handling naks what it left."""
    retry = Backoff(0.1, cap=5.0)
    while True:
        try:
            msgs = await puller.fetch(batch, fetch_timeout, ahead=ahead)
        except (NatsError, JetStreamError) as exc:
            log.warning("fetch failed", stream=stream, owner=owner, error=str(exc))
            await retry.sleep()
            continue
        retry.reset()
        if msgs:
            try:
                await handle(msgs)
            except BaseException:
                # Stopping (or failing) mid-batch: hand back what was not acknowledged now,
                # rather than leaving it to wait out ack_wait on the server.
                with anyio.CancelScope(shield=True):
                    await _nak_unacked(msgs)
                raise
