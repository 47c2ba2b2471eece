"""nats-py's client, kept serving whatever bytes another publisher sends (`connect` makes these).

Why: nats-py (2.16) decodes each message's subject and reply subject as strict UTF-8 inside its
read loop; one publisher sending `PUB a.\\xff b 2` raises there, the loop logs "nats: encountered
error" and ends, and the connection stays up but deaf: every subscription, every request, for
good. Here a subject or reply that is not UTF-8 is dropped before nats-py builds a message,
counted, logged, and, for a subscription that asked for it (`answer_undecodable`), answered
when the reply subject can be read. Header values that are not UTF-8 arrive with their bad
bytes as lone surrogates (`surrogateescape`), not U+FFFD as in nats-py: two different bad
command ids must not read as one, and a reader can tell them apart from real text
(`protocol.readable`). Anything else nats-py raises on one message is dropped and counted
the same way, as are the messages it drops as a slow consumer (a subscription's pending limits).

It also closes a reconnect's socket when that attempt's handshake fails: nats-py opens the next
attempt's socket over the previous one's and leaves that to the garbage collector (a file
descriptor per attempt against a server that accepts and says nothing, and a ResourceWarning
wherever the collector next runs). And a reconnect still running once the client is closed
stops at its next attempt rather than connect a closed client again. Its TCP connect is bounded
without `asyncio.wait_for`, which in Python 3.11 can drop a connection it just made.

For nats-py upstream: `Client._build_message` and `_process_headers` decode with strict UTF-8
inside `_read_loop`, whose catch-all logs and exits without closing or reconnecting;
`Msg.respond` sends the request's headers back with the reply; `_attempt_reconnect`, after
`_process_connect_init` fails, calls `TcpTransport.connect` again without closing its writer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from nats.aio.client import DEFAULT_BUFFER_SIZE
from nats.aio.client import Client as NATS
from nats.aio.transport import TcpTransport

log = structlog.get_logger("memoir.nats")

_CRLF = b"\r\n"
_LOGGED = 10  # dropped messages logged one by one; after that every 1000th


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """A NATS header block as nats-py reads it (names ASCII tokens or skipped), values decoded with
    `surrogateescape`: a bad byte stays visible. One check per name, not per character."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:  # also the empty line
            continue
        stripped = name.strip()
        if not stripped.isascii():
            continue
        key = stripped.decode("ascii")
        if key and key.split() != [key]:  # whitespace inside a name: skipped, as nats-py does
            continue
        out[key] = value.strip().decode("utf-8", "surrogateescape")
    return out


def _text(raw: bytes) -> str | None:
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def drop_socket(nc: NATS) -> None:
    """Abort the client's socket at once if it is still open (nats-py 2.x's transport holds asyncio
    StreamWriters: the one in use, and under TLS the plain one beneath; anything else is left alone).

    Also one already closing: a close waits for the write buffer to drain first, and towards a
    server that stopped reading (paused, or cut off) it never does. An abort of a socket already
    gone does nothing."""
    transport = getattr(nc, "_transport", None)
    for name in ("_io_writer", "_bare_io_writer"):
        socket = getattr(getattr(transport, name, None), "transport", None)
        if socket is not None:
            socket.abort()


class _TcpTransport(TcpTransport):
    """nats-py's TCP transport, its connect bounded by `asyncio.timeout` instead of `asyncio.wait_for`.

    In Python 3.11, `wait_for` runs the connect as a task of its own; cancelled just as that task
    finished, it raises and drops the finished connection, whose socket nobody closes (CPython
    gh-86296, fixed in 3.12). Seen here: every unclosed socket a cluster test's collector found
    was opened by a lease thread's connect cut short. A timeout scope runs the connect in the
    caller's task: what it opens is stored before any cancel can land."""

    async def connect(self, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        async with asyncio.timeout(connect_timeout):
            r, w = await asyncio.open_connection(host=uri.hostname, port=uri.port, limit=buffer_size)
        self._bare_io_reader = self._io_reader = r
        self._bare_io_writer = self._io_writer = w


class GuardedClient(NATS):
    """nats-py's `Client`, dropping (and counting) what its read loop would die of."""

    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0  # messages not delivered: not UTF-8, a header block nats-py chokes on, a full buffer
        self._answers: dict[int, bytes] = {}  # sid -> what to answer such a message when its reply reads
        self._closed_for_good = False

    async def _close(self, status: int, do_cbs: bool = True) -> None:
        if status == NATS.CLOSED:  # for good (a failed first attempt closes as DISCONNECTED and tries again)
            self._closed_for_good = True
        await super()._close(status, do_cbs)

    async def _connect_to_server(self, s: Any) -> None:
        # A reconnect that outlived the close (its cancel lost in asyncio.wait_for's race with a connect
        # that had just finished) would go on opening sockets on a closed client: it ends here instead.
        if self._closed_for_good:
            raise asyncio.CancelledError
        drop_socket(self)  # a previous attempt's, if its handshake failed; nothing while connected
        if s.uri.scheme in ("nats", "tls"):  # as nats-py does, on the transport above (TLS upgrades it later)
            s.last_attempt = time.monotonic()
            if not isinstance(self._transport, _TcpTransport):
                self._transport = _TcpTransport()  # type: ignore[no-untyped-call]  # nats-py: untyped __init__
            await self._transport.connect(s.uri, DEFAULT_BUFFER_SIZE, self.options["connect_timeout"])
        else:
            await super()._connect_to_server(s)
        if self._closed_for_good:  # closed while this connect ran: what it opened goes too
            drop_socket(self)
            raise asyncio.CancelledError

    def slow_consumer(self, exc: Exception) -> None:
        """nats-py dropped a message: the subscription's buffer was full (its pending limits)."""
        self._dropped("NATS message dropped: the subscription's buffer is full (slow consumer)", b"", b"", exc)

    def answer_undecodable(self, sub: Any, body: bytes) -> None:
        """Answer `body` to a message for `sub` whose subject is not UTF-8 but whose reply is."""
        self._answers[sub._id] = body

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._answers.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if not (subject.isascii() and reply.isascii()) and (_text(subject) is None or _text(reply) is None):
            await self._undecodable(sid, subject, reply)
            return
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        except Exception as exc:  # noqa: BLE001 - raised here it would end the read loop for good
            self._dropped("NATS message dropped: nats-py could not read it", subject, reply, exc)

    async def _undecodable(self, sid: int, subject: bytes, reply: bytes) -> None:
        self._dropped("NATS message dropped: its subject or reply subject is not UTF-8", subject, reply, None)
        inbox = _text(reply)
        body = self._answers.get(sid)
        if inbox and body is not None and self.is_connected:
            try:
                await self.publish(inbox, body)
            except Exception as exc:  # noqa: BLE001 - as above: the read loop must go on
                log.warning("NATS answer not sent", reply=inbox, error=str(exc))

    def _dropped(self, what: str, subject: bytes, reply: bytes, exc: Exception | None) -> None:
        self.dropped += 1
        if self.dropped <= _LOGGED or self.dropped % 1000 == 0:
            error = None if exc is None else f"{type(exc).__name__}: {exc}"
            log.warning(what, subject=repr(subject[:200]), reply=repr(reply[:200]), dropped=self.dropped, error=error)
