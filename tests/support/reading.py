"""Read back everything a journal or a stream holds, to assert on what was stored."""

from __future__ import annotations

from typing import Any

import anyio
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import ServiceUnavailableError

from runtime import Envelope, Journal


async def journal_events(journal: Journal) -> list[Envelope]:
    """Every event in the journal, in position order."""
    out: list[Envelope] = []
    while page := await journal.read_all(out[-1].position + 1 if out else 1, limit=1000):
        out.extend(page)
    return out


async def stream_messages(js: Any, stream: str, attempts: int = 5) -> list[Any]:
    """Every message in a stream, read by a plain nats-py ephemeral pull consumer.

    On a clustered stream a read can meet a leader election (JetStream answers 503, or the
    fetch times out); the whole read starts again, a few times, as an operator would retry."""
    for attempt in range(1, attempts + 1):
        try:
            return await _read_stream(js, stream)
        except (ServiceUnavailableError, NatsTimeoutError):
            if attempt == attempts:
                raise
            await anyio.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


async def stream_total(js: Any, stream: str) -> int | None:
    """How many messages a stream holds, or None while its leader is being elected."""
    try:
        return int((await js.stream_info(stream)).state.messages)
    except (ServiceUnavailableError, NatsTimeoutError):
        return None


async def _read_stream(js: Any, stream: str) -> list[Any]:
    info = await js.stream_info(stream)
    total = info.state.messages
    if not total:
        return []
    sub = await js.pull_subscribe(
        "",
        stream=stream,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE),
    )
    msgs: list[Any] = []
    try:
        while len(msgs) < total:
            msgs.extend(await sub.fetch(min(500, total - len(msgs)), timeout=5))
    finally:
        await sub.unsubscribe()
    return msgs
