"""A durable JetStream pull consumer on one entity type's events, fetched in batches until cancelled.

The events are in the type's own stream (the outbox's) or in the JetStream journal's
stream; either way the consumer filters on `{prefix}.events.{type}.*`.

Views and consumers both read events this way; they differ only in what they do
with a batch and how they acknowledge it. A batch interrupted by a shutdown is
nak'ed so it is redelivered at once; one held by a process that died comes
back after `ack_wait` (10 s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from .wire import events_filter

log = structlog.get_logger("memoir.subscription")

Handle = Callable[[list[Msg]], Awaitable[None]]


async def _fetch(psub: Any, batch: int, idle_timeout: float) -> list[Msg]:
    """Whatever is ready now (up to `batch`), else wait for the next message.

    nats-py's fetch(n) that finds nothing ready long-polls until n messages came or the timeout
    passed, so under a trickle every batch would wait out the timeout. Asking for what is ready,
    and long-polling for one message only when nothing is, keeps latency at a few milliseconds.
    """
    try:
        return await psub.fetch(batch, timeout=0.005)  # type: ignore[no-any-return]
    except TimeoutError:
        return await psub.fetch(1, timeout=idle_timeout)  # type: ignore[no-any-return]


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
    try:
        await js.delete_consumer(stream, consumer_name(owner, entity_type))
    except NotFoundError:
        pass


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
    fetch_timeout: float = 0.5,
    start_seq: int | None = None,
) -> None:
    """Fetch and handle batches forever; connection trouble is logged and retried, never fatal.

    With `start_seq` the durable consumer is recreated to start there: a view passes the
    position after its own checkpoint, so what the server thinks was acknowledged (AckAll
    acknowledges everything below, including messages a dead process held) never decides
    what the view sees.
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
    backoff = 0.1
    while True:
        try:
            if start_seq is not None:
                await delete_durable(js, stream, entity_type, owner)
            psub = await js.pull_subscribe(
                events_filter(prefix, entity_type), durable=config.durable_name, stream=stream, config=config
            )
            break
        except (NatsError, JetStreamError) as exc:  # the stream may not exist yet: the publisher makes it
            log.info("waiting for stream", stream=stream, owner=owner, error=str(exc))
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
    try:
        backoff = 0.1
        while True:
            try:
                msgs = await _fetch(psub, batch, fetch_timeout)
            except TimeoutError:  # nothing new (nats-py raises its own and asyncio's, both subclass this)
                continue
            except (NatsError, JetStreamError) as exc:
                log.warning("fetch failed", stream=stream, owner=owner, error=str(exc))
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if msgs:
                try:
                    await handle(msgs)
                except BaseException:
                    # Stopping (or failing) mid-batch: hand back what was not acknowledged now,
                    # rather than leaving it to wait out ack_wait on the server.
                    with anyio.CancelScope(shield=True):
                        await _nak_unacked(msgs)
                    raise
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await psub.unsubscribe()
            except (NatsError, JetStreamError):
                pass
