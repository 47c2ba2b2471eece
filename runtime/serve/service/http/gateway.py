"""The HTTP gateway's server: uvicorn (httptools) inside the service's task group.

uvicorn was chosen by measurement (benchmarks/http_commands.py, the README's HTTP section).
It is embedded, not run: we bind the socket (so the port is known, and `0` means any free one),
uvicorn serves on it, and `stop()` ends it. uvicorn's own signal handling is switched off: SIGTERM
belongs to `memoir run`, which stops the gateway first, then the NATS door behind it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec
import structlog

from ....model.errors import ConfigError
from .._service import Service
from ..auth import StaticToken, Verifier
from ..specs.openapi import openapi
from .app import BODY_TIMEOUT_S, HttpApi
from .console import Console
from .guard import Access, origin_guard
from .idempotency import IdempotencyKeys
from .protocol import head_timeout_protocol
from .sse import tail

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger("memoir.http")

GRACE_S = 5  # seconds in-flight requests get to finish on shutdown
RESERVED = ("events", "views", "openapi.json", "ui")  # first path segments that are not entity types


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that leaves the process's signals to `memoir run`.

    uvicorn is imported here, not with the module: `import runtime` stays light for whoever
    does not serve HTTP (the CLI's one-shot commands, embedders).
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


class HttpGateway:
    """Serves the HTTP API of a service. Run with `port = await tg.start(gateway.run)`; `await gateway.stop()`.

    Commands are NATS requests, so a `NatsDoor` (as `memoir run` starts) must serve the service's
    command subjects, here or in another process of the cluster.
    """

    def __init__(
        self,
        service: Service,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        verifier: Verifier | None = None,
        insecure: bool = False,
        cors_origins: Sequence[str] = (),
        timeout: float = 5.0,
        body_timeout: float = BODY_TIMEOUT_S,
        head_timeout: float = BODY_TIMEOUT_S,
        max_body: int = 1 << 20,
    ) -> None:
        """Secure by default: give the data dir's `token`, or a JWT `verifier`, or `insecure=True`.

        With a verifier the token is not used: JWTs name callers, which the access rules need.
        A request's head must arrive within `head_timeout` seconds, its body within `body_timeout`
        (408 and the connection closed, so slow clients cannot hold connections).
        """
        for name in RESERVED:
            if name in service.runtime.models:
                raise ConfigError(f"an entity type named {name!r} clashes with the HTTP route /{name}…; rename it")
        if verifier is not None:
            access = Access(verifier=verifier)
        elif token is not None:
            access = Access(token=StaticToken(token))
        else:
            access = Access(insecure=insecure)  # refuses to start unless insecure was said
            log.warning("the HTTP API is open to every local user and process: --http-insecure")
        self.service = service
        self.host = host
        self.port = port
        self.access = access
        self._doc: bytes | None = None
        self.api = HttpApi(
            service,
            access=access,
            timeout=timeout,
            body_timeout=body_timeout,
            max_body=max_body,
            openapi=self.openapi,
            tail=tail,
        )
        from uvicorn import Config

        self.console = Console(self.api)  # /ui: the web console, outside the Origin guard (it checks its own)
        config = Config(
            self.console.mount(origin_guard(self.api, cors_origins)),
            http=head_timeout_protocol(head_timeout),  # httptools, with a deadline for request heads
            ws="none",
            lifespan="off",
            log_config=None,
            log_level=logging.WARNING,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACE_S,
        )
        self._server = _server(config)
        self._done = anyio.Event()

    def openapi(self) -> bytes:
        if self._doc is None:
            self._doc = msgspec.json.encode(openapi(self.service.app, secured=not self.access.insecure))
        return self._doc

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def banner(self) -> str:
        """For the start-up line: where, and what a request needs (never the token itself)."""
        access = self.access
        needs = (
            "a JWT" if access.verifier else "no credential (insecure)" if access.insecure else "the data dir's token"
        )
        return f"; http {self.url} ({needs})"

    async def run(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the port, serve until `stop()`."""
        assert self.service.nc is not None
        js = self.service.nc.jetstream()
        self.api.keys = await IdempotencyKeys.open(js, self.service.prefix, replicas=self.service.streams.replicas)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto given: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it every
        # response (head and body are two writes) waits out the client's delayed ACK, ~40 ms.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise ConfigError(f"cannot serve HTTP on {self.host}:{self.port}: {exc.strerror}") from None
            sock.listen(1024)  # connections queue from now on; uvicorn accepts them
            self.port = sock.getsockname()[1]
            task_status.started(self.port)
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()
            self._done.set()

    async def stop(self) -> None:
        """End live tails, take no more requests, let in-flight ones finish (up to GRACE_S)."""
        self.api.closing.set()
        self._server.should_exit = True
        await self._done.wait()
