"""Read back everything a journal or a stream holds, to assert on what was stored."""

from __future__ import annotations

from typing import Any

from nats.js import api

from runtime import Envelope, Journal


async def journal_events(journal: Journal) -> list[Envelope]:
    """Every event in the journal, in position order."""
    out: list[Envelope] = []
    while page := await journal.read_all(out[-1].position + 1 if out else 1, limit=1000):
        out.extend(page)
    return out


async def stream_messages(js: Any, stream: str) -> list[Any]:
    """Every message in a stream, read by a plain nats-py ephemeral pull consumer."""
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
    while len(msgs) < total:
        msgs.extend(await sub.fetch(min(500, total - len(msgs)), timeout=5))
    await sub.unsubscribe()
    return msgs
