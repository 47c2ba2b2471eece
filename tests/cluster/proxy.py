"""TCP proxies between one process and the NATS nodes, which the test can cut like a partition.

A cut (`Link.cut()`) is a blackhole, not a close: the proxies stop reading and stop forwarding in
both directions and keep every socket open, so neither end sees a FIN or an RST. What a sender
writes meanwhile waits in kernel buffers (or in the one chunk a pump had read as the cut came),
as unacknowledged segments wait for retransmission, and flows on `heal()`. A connection opened
during the cut is accepted but reaches nothing until the heal, as a SYN lost on the way would.

The test's nodes must not advertise their client URLs (`no_advertise`), or the process would
learn the nodes' own ports from the cluster's gossip and reconnect around the proxies.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

from runtime.serve.service.embedded_nats import free_port

CHUNK = 65536


class Link:
    """One process's links to the nodes: a proxy per node, cut and healed together."""

    def __init__(self, targets: list[int]) -> None:
        self.routes = [(free_port(), target) for target in targets]  # (the proxy's port, the node's port)
        self._healed = anyio.Event()
        self._healed.set()

    @property
    def url(self) -> str:
        """The NATS URL that reaches the nodes through the proxies, comma-separated."""
        return ",".join(f"nats://127.0.0.1:{port}" for port, _ in self.routes)

    @property
    def is_cut(self) -> bool:
        return not self._healed.is_set()

    def cut(self) -> None:
        if not self.is_cut:
            self._healed = anyio.Event()

    def heal(self) -> None:
        self._healed.set()

    async def _passable(self) -> None:
        await self._healed.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Link]:
        """Listen on every proxy port until the block ends; the connections end with it."""
        async with anyio.create_task_group() as tg:
            for port, target in self.routes:
                listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
                tg.start_soon(self._serve, listener, target)
            try:
                yield self
            finally:
                self.heal()  # nothing waits on a cut that will never heal
                tg.cancel_scope.cancel()

    async def _serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream], target: int) -> None:
        async with listener:
            await listener.serve(lambda client: self._connection(client, target))

    async def _connection(self, client: anyio.abc.SocketStream, target: int) -> None:
        async with client:
            await self._passable()  # a connection opened during a cut reaches the node only after the heal
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", target)
            except OSError:
                return  # the node is down: the client sees its connection closed, as if refused
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pump, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pump, upstream, client, tg.cancel_scope)

    async def _pump(self, src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, both: anyio.CancelScope) -> None:
        """Forward until either end closes, then end both directions (a close passes as a close)."""
        try:
            while True:
                await self._passable()
                data = await src.receive(CHUNK)
                await self._passable()  # read just as the cut came: held until the heal, not dropped
                await dst.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            both.cancel()
