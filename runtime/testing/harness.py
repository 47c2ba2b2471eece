"""An app served in-process as `memoir run` serves it, on a memory journal: for tests.

The same parts as `serve.server`, assembled the same way — a `Service` (runtime,
outbox publisher, views, consumers), then `Admin` (view queries over NATS) and the
`NatsDoor` (commands over NATS) — minus what a process needs and a test does not:
signals, the banner, metrics, an embedded server of its own. Everything lives under
one subject prefix; the prefix's streams are kept in memory and deleted on the way
out, so many tests can share one nats-server without seeing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from ..journal import Journal, MemoryJournal
from ..model.app import App
from ..serve.service._service import Service
from ..serve.service.admin import Admin
from ..serve.service.auth import Verifier
from ..serve.service.nats_door import NatsDoor
from ..streams.publisher import StreamSettings
from ..streams.view_store import MemoryViewStore, ViewStore
from ..wire.nats import close_quietly, connect
from ..wire.protocol import check_prefix, stream_prefix


@contextlib.asynccontextmanager
async def served(
    app: App,
    nats_url: str,
    *,
    prefix: str,
    journal: Journal | None = None,
    view_store: ViewStore | None = None,
    workers: int = 16,
    delete_streams: bool = True,
    verifier: Verifier | None = None,
    **options: Any,
) -> AsyncIterator[Service]:
    """Serve `app` on `nats_url` under `prefix` until the block ends; yields the running Service.

    The journal and view store default to fresh memory ones; `options` go to `Service` (and on
    to its `Runtime`: `passivate_after=`, `mailbox_size=` …). Commands sent to the prefix are
    answered as soon as this yields (the NATS door's subscription has reached the server).
    On the way out every stream of the prefix is deleted — a JetStream journal's own too, when
    it shares the prefix — unless `delete_streams=False`. With a `verifier` commands' bearer
    tokens are checked as `memoir run --jwt-…` checks them, so access rules can be tested end to end.
    """
    options.setdefault("flush_timeout", 5.0)
    options.setdefault("streams", StreamSettings(storage="memory"))
    check_prefix(prefix)
    nc = await connect(nats_url, timeout=10, name=f"memoir-test-{app.name}")
    failed: BaseException | None = None  # the block's own error, raised once every task group is closed
    try:
        async with contextlib.AsyncExitStack() as stack:
            if journal is None:
                journal = await stack.enter_async_context(MemoryJournal())
            svc = await stack.enter_async_context(
                Service(
                    app,
                    journal,
                    nc=nc,
                    prefix=prefix,
                    view_store=view_store or MemoryViewStore(),
                    **options,
                )
            )
            admin = Admin(svc)
            door = NatsDoor(svc.runtime, nc, prefix=prefix, workers=workers, verifier=verifier)
            async with anyio.create_task_group() as serving:
                await admin.start()
                await serving.start(door.run)
                await nc.flush()  # the subscriptions are on the server: a client's first command finds them
                try:
                    yield svc
                except BaseException as exc:  # noqa: BLE001 - re-raised below as itself, not in task groups' groups
                    failed = exc
                with anyio.CancelScope(shield=True):
                    await admin.stop()
                    await door.stop()  # the workers finish what they hold, then return
        if failed is not None:
            raise failed
    finally:
        with anyio.CancelScope(shield=True):
            if delete_streams:
                await _delete_streams(nc, prefix)
            await close_quietly(nc)


async def _delete_streams(nc: NATS, prefix: str) -> None:
    """Drop this prefix's streams (their consumers go with them): a shared server stays small."""
    js = nc.jetstream()
    mine = stream_prefix(prefix) + "_"
    with contextlib.suppress(NatsError, JetStreamError):
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(mine):
                await js.delete_stream(info.config.name)
