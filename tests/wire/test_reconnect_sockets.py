"""A reconnect whose handshake fails closes the socket it opened before it tries again.

nats-py (2.16) reconnects by opening a new socket over its transport's previous one. When the
TCP connect succeeds but the handshake does not (a server that accepts and then says nothing,
as a paused or overloaded one does), the socket of each failed attempt stays open until the
garbage collector finds it: a file descriptor per attempt, and a ResourceWarning wherever the
collector happens to run. `GuardedClient` drops the previous socket before each new one.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runtime.wire.nats import connect

from .servers import nats_server

pytestmark = pytest.mark.anyio


class SilentServer:
    """Accepts connections and never speaks; counts how many are open at once."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.accepted = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while await reader.read(4096):  # b"" once the client closed its socket
                pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Sockets a client dropped without closing would be closed by the collector at random: not here."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def test_failed_handshakes_while_reconnecting_leave_no_socket_open(tmp_path: Path, no_gc: None) -> None:
    async with nats_server("port: {port}\n", tmp_path) as port:
        nc = await connect(f"nats://127.0.0.1:{port}", reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        nc.options["connect_timeout"] = 0.3  # each silent handshake gives up sooner than `connect` allows
    # the real server is gone; the port now accepts and never sends INFO
    silent = SilentServer()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", port)
    try:
        with anyio.fail_after(30):
            while silent.accepted < 6:
                await anyio.sleep(0.05)
        # each attempt's handshake timed out; only the attempt under way may hold a socket
        assert silent.most_open <= 1, f"{silent.most_open} of {silent.accepted} attempts' sockets open at once"
        await nc.close()  # while an attempt waits for the server to speak
        accepted = silent.accepted
        with anyio.fail_after(5):
            while silent.open:
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # on purpose: longer than reconnect_time_wait, so a reconnect going on would show
        assert silent.accepted == accepted, "the closed client connected again"
    finally:
        await nc.close()
        server.close()
        await server.wait_closed()
