"""`GET /events/{type}`: a live tail of an entity type's events as Server-Sent Events.

Each tail is a JetStream ordered consumer (ephemeral, flow-controlled, recreated by nats-py
on a gap) on the type's stream, filtered to the type's subjects. Each event is one SSE message:

    id: <stream sequence>          what `Last-Event-ID` (or `?after=`) resumes after
    event: <event name>
    data: <the event as GET /{type}/{id}/events shows it, payload included>

With neither, the tail starts with the next event; `?after=0` replays the whole stream first.
A comment line is sent every few seconds without events, so proxies keep the connection and
the client learns early that it is gone. The tail ends when the client disconnects or the
gateway shuts down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from ....model.errors import ErrorCode
from ....wire.protocol import envelope_from_message, events_filter
from .asgi import Receive, Scope, Send, end_with_client_or_gateway, header
from .records import event_record
from .request import HttpError, Query

if TYPE_CHECKING:
    from .app import HttpApi

log = structlog.get_logger("memoir.http")

HEARTBEAT_S = 5.0
_encoder = msgspec.json.Encoder()


def _start_after(scope: Scope, query: Query) -> int | None:
    """The stream sequence to resume after: Last-Event-ID, else ?after=, else None (new events only)."""
    after = query.integer("after", None, 0, 2**63 - 1)  # checked even when the header wins
    last = header(scope, b"last-event-id")
    if last is not None:
        text = last.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise HttpError(ErrorCode.INVALID, "header Last-Event-ID must be a stream sequence (an integer)")
        return int(text)
    return after


async def tail(api: HttpApi, scope: Scope, receive: Receive, send: Send, entity_type: str, query: Query) -> None:
    after = _start_after(scope, query)
    if after is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    js = api.nc.jetstream()
    sub = await js.subscribe(
        events_filter(api.prefix, entity_type),
        stream=api.service.stream_for(entity_type),
        ordered_consumer=True,
        config=config,
    )
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b": tailing " + entity_type.encode() + b"\n\n", "more_body": True}
        )
        async with anyio.create_task_group() as tg:
            end_with_client_or_gateway(tg, receive, api.closing)
            reader = api.reader()
            while True:
                try:
                    msg = await sub.next_msg(timeout=HEARTBEAT_S)
                except NatsTimeoutError:
                    await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                    continue
                try:
                    env = envelope_from_message(msg.subject, msg.headers, msg.data)
                except ValueError as exc:  # not ours: say so once in the log, skip it
                    log.warning("skipped a message on an event stream", subject=msg.subject, error=str(exc))
                    continue
                frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    msg.metadata.sequence.stream,
                    env.name.encode(),
                    _encoder.encode(await event_record(env, reader)),
                )
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        with anyio.CancelScope(shield=True):
            await sub.unsubscribe()
