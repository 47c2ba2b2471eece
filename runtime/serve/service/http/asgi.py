"""The ASGI types the gateway's modules share, reading a request header, and ending a stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.abc

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a (lower-case) request header, as latin-1 text, or None."""
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), None)


def end_with_client_or_gateway(tg: anyio.abc.TaskGroup, receive: Receive, closing: anyio.Event) -> None:
    """Cancel a streaming response's task group when its client goes or the gateway closes."""

    async def until_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        tg.cancel_scope.cancel()

    async def until_closing() -> None:
        await closing.wait()
        tg.cancel_scope.cancel()

    tg.start_soon(until_gone)
    tg.start_soon(until_closing)
