"""The example app behind a real HTTP gateway, in-process: embedded nats-server, SQLite journal, NATS door."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
from support.served import Served, serve

from entities import app
from runtime import Verifier
from runtime.serve.service import HttpGateway
from runtime.serve.service.admin import Admin

TOKEN = "t" * 20 + "0123456789abcdef0123"  # 40 characters, as the data dir's would be
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Gated:
    served: Served
    gateway: HttpGateway
    url: str

    def http(self, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        """A client that sends the token unless `headers` say otherwise."""
        return httpx.AsyncClient(base_url=self.url, timeout=10, headers=BEARER if headers is None else headers)

    async def last_position(self) -> int:
        return await self.served.journal.last_position()


@contextlib.asynccontextmanager
async def gateway(
    tmp: Path,
    *,
    verifier: Verifier | None = None,
    insecure: bool = False,
    origins: Sequence[str] = (),
    body_timeout: float = 1.0,
) -> AsyncIterator[Gated]:
    """Serve `entities:app` over HTTP with the token (or `verifier`, or `insecure`), views queryable."""
    token = None if verifier is not None or insecure else TOKEN
    async with serve(app, tmp, verifier) as served, anyio.create_task_group() as tg:
        admin = Admin(served.svc)
        await admin.start()
        gw = HttpGateway(
            served.svc,
            token=token,
            verifier=verifier,
            insecure=insecure,
            cors_origins=origins,
            body_timeout=body_timeout,
            head_timeout=body_timeout,
        )
        port = await tg.start(gw.run)
        try:
            yield Gated(served, gw, f"http://127.0.0.1:{port}")
        finally:
            await gw.stop()
            await admin.stop()
