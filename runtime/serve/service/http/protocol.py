"""uvicorn's httptools protocol, with a deadline for each request's head and one write per response.

uvicorn closes a connection idle between requests (keep-alive, 5 s), but one that never sends a
request, or sends its head a byte at a time, it holds for ever: a handful of such clients would
hold the gateway's connections (slowloris). Here a connection must deliver each request head —
request line and headers — within `seconds` of opening or of the request's first byte, or it is
answered 408 and closed. The body has its own deadline (`HttpApi.body_timeout`), in the app.
The deadline is one timer per connection that re-arms itself when it finds a newer head, not a
timer made and cancelled per request (two timer operations per command under load).

uvicorn writes a response's head when the app sends `http.response.start` and its body with the
next message: two writes, two system calls and two segments the client reads. `OneWrite` holds
the head until the body comes (the same turn, for every response the API builds whole), or until
the loop's next turn (a stream's head, a body that is late), so a command's answer is one write.

uvicorn is imported when the class is made, by a gateway starting: `import runtime` stays light.
"""

from __future__ import annotations

import asyncio

from ....model.errors import CommandError
from ....wire.protocol import encode_error


class OneWrite:
    """A response's transport for uvicorn's request cycle: its first write waits for the next, or a loop turn."""

    __slots__ = ("_first", "_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._first = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._first:  # the head (or a 100 Continue): held, sent with what follows or next turn
            self._first = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self.transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


def head_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=…)`: heads cut after `seconds`, answers in one write."""
    from uvicorn.protocols.http.httptools_impl import (
        HttpToolsProtocol,  # with the gateway: `import runtime` stays light
    )

    body = encode_error(CommandError("request_timeout", f"the request head did not arrive within {seconds:g}s"))
    answer = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    answer += b"connection: close\r\n\r\n" + body

    class HeadTimeout(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_since: float | None = None  # loop time the head being read began; None between heads

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._head_since = None
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.transport is self.transport:  # a new cycle: its answer in one write
                cycle.transport = OneWrite(self.transport, self.loop)  # type: ignore[assignment]

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_since = None
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_since = self.loop.time()
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(seconds, self._check)

        def _check(self) -> None:
            self._head_timer = None
            since = self._head_since
            if since is None:  # no head being read: the next one arms again
                return
            left = since + seconds - self.loop.time()
            if left > 0:  # a later head than the one this timer was set for
                self._head_timer = self.loop.call_later(left, self._check)
            elif not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeadTimeout
