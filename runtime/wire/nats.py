"""NATS helpers every layer above shares: connecting with errors that say what broke, closing."""

from __future__ import annotations

from typing import Any

import anyio
import nats
from nats.aio.client import Client as NATS

from ..model.errors import MemoirError


async def _quiet(exc: Exception) -> None:
    """nats-py prints every connection error with a traceback by default; we report our own."""


async def connect(url: str, *, timeout: float = 5.0, **options: Any) -> NATS:
    """Connect to NATS or fail within `timeout` with a MemoirError naming the URL.

    (nats-py keeps retrying an initial connection that is refused, whatever allow_reconnect says.)
    """
    try:
        with anyio.fail_after(timeout):
            return await nats.connect(url, connect_timeout=min(timeout, 2.0), error_cb=_quiet, **options)
    except Exception as exc:  # noqa: BLE001 - TimeoutError, OSError, nats errors: one message
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise MemoirError(f"cannot connect to NATS at {url}: {reason}") from None


async def close_quietly(nc: NATS) -> None:
    """Drain (flush what was published, then close); if the server is already gone, just close."""
    try:
        await nc.drain()
    except Exception:  # noqa: BLE001 - nats-py raises several types once a connection is broken
        await nc.close()
