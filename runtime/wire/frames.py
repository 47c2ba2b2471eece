"""Many messages written to a NATS connection as one piece, encoded here as protocol frames.

Why: nats-py's `publish` checks and encodes each header on its own (strip, a regex, a newline
translation, an encode: about a microsecond each, and an event carries nine) and queues every
message as a write of its own. The outbox and the JetStream journal send events by the
thousand, as atomic batches or pipelined messages, with header names of our own and values we
made: so a message here is one f-string and one `encode`, a batch is one `bytes.join`, and
nats-py's flusher gets it as a single write.

What nats-py would refuse, or change on the way (a subject with whitespace, a header name
that is not a token, a header value with a line break, a payload over the server's limit), or a
connection not up (nats-py buffers for a reconnect) goes by nats-py's own `publish`, message by
message, so its answer is the same as ever. So does everything when the client's internals
are not where this expects them: the result is then only slower. (Values are not stripped as
nats-py strips them: every reader strips them, nats-py's parser too, so they arrive the same.)
`tests/wire/test_frames.py` holds what arrives to what nats-py's own publish delivers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nats.aio.client import Client as NATS

Message = tuple[str, bytes, dict[str, str]]
"""(subject, payload, headers)"""

_UNSAFE_SUBJECT = re.compile(r"[ \t\r\n]")  # what nats-py's publish refuses in a subject (and empty)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # the header names nats-py sends (RFC 7230 tokens)
_names: set[str] = set()  # names seen to pass, so the check is one set operation after the first message


def _plain_names(headers: dict[str, str]) -> bool:
    if _names.issuperset(headers):
        return True
    for name in headers:
        if name not in _names:
            if not _HEADER_NAME.fullmatch(name) or len(_names) > 1000:
                return False
            _names.add(name)
    return True


def hpub(subject: str, reply: str, headers: dict[str, str], payload: bytes) -> bytes | None:
    """The HPUB frame of one message; None if it needs nats-py's checks (see the module docstring)."""
    if not _plain_names(headers):
        return None
    block = "\r\n".join(map(": ".join, headers.items()))  # (no headers: nats-py's, below)
    if block.count("\n") != len(headers) - 1 or block.count("\r") != len(headers) - 1:  # a line break in a value
        return None
    if not subject or _UNSAFE_SUBJECT.search(subject) or (reply and _UNSAFE_SUBJECT.search(reply)):
        return None
    head = f"NATS/1.0\r\n{block}\r\n\r\n".encode()
    total = len(head) + len(payload)
    line = f"HPUB {subject} {reply} {len(head)} {total}\r\n" if reply else f"HPUB {subject} {len(head)} {total}\r\n"
    return b"".join((line.encode(), head, payload, b"\r\n"))


def _writable(nc: NATS) -> bool:
    return (
        nc.is_connected
        and not nc.is_draining_pubs
        and hasattr(nc, "_send_command")
        and getattr(nc, "_flush_queue", None) is not None
        and isinstance(getattr(nc, "stats", None), dict)
    )


async def publish(nc: NATS, messages: Sequence[Message], replies: Sequence[str]) -> None:
    """Publish `messages` in order, each with its reply subject ("" for none), in one write if it can."""
    frames: list[bytes] = []
    size = 0
    limit = nc.max_payload
    if _writable(nc):
        for (subject, payload, headers), reply in zip(messages, replies, strict=True):
            frame = hpub(subject, reply, headers, payload) if len(payload) <= limit else None
            if frame is None:
                break
            frames.append(frame)
            size += len(payload)
    if len(frames) < len(messages):  # nats-py's own checks and buffering, one by one
        for (subject, payload, headers), reply in zip(messages, replies, strict=True):
            await nc.publish(subject, payload, reply=reply, headers=headers)
        return
    nc.stats["out_msgs"] += len(frames)
    nc.stats["out_bytes"] += size
    await nc._send_command(b"".join(frames))
    if nc._flush_queue is not None and nc._flush_queue.empty():  # as nats-py's publish: kick the flusher
        await nc._flush_pending()
