"""uvicorn's httptools protocol, with a deadline for each request's head.

uvicorn closes a connection idle between requests (keep-alive, 5 s), but one that never sends a
request, or sends its head a byte at a time, it holds for ever: a handful of such clients would
hold the gateway's connections (slowloris). Here a connection must deliver each request head —
request line and headers — within `seconds` of opening or of the request's first byte, or it is
answered 408 and closed. The body has its own deadline (`HttpApi.body_timeout`), in the app.

uvicorn is imported when the class is made, by a gateway starting: `import runtime` stays light.
"""

from __future__ import annotations

import asyncio

from ....model.errors import CommandError
from ....wire.protocol import encode_error


def head_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=…)`, cutting heads that take over `seconds`."""
    from uvicorn.protocols.http.httptools_impl import (
        HttpToolsProtocol,  # with the gateway: `import runtime` stays light
    )

    body = encode_error(CommandError("request_timeout", f"the request head did not arrive within {seconds:g}s"))
    answer = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    answer += b"connection: close\r\n\r\n" + body

    class HeadTimeout(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeadTimeout
