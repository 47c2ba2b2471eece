"""`memoir run`: the runtime as a process.

With no NATS URL it starts an embedded nats-server (data in `{data_dir}/nats`,
its URL written to `{data_dir}/nats.url` so `memoir send` finds it); with no
journal URL it uses SQLite in the data directory. SIGTERM or SIGINT shut it
down gracefully: stop taking commands, finish the turns in flight, flush the
publisher, close the journal, exit 0. A SIGKILL loses nothing acknowledged:
every reply was sent after its events were durable.

A full disk is not a crash: starting on one is one line naming it (exit 2), and a
SIGTERM while full still exits 0 after flushing what could be flushed (storage.py).

`_serve` is the run in its phases, in order: start or reach NATS, open the stores, start the
service, open the doors, wait for the signal, stop the doors in order; leaving its exit stack
then closes the service, the stores and the embedded server, in reverse.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskGroup

from ...journal import Journal, open_journal
from ...model.app import App
from ...model.errors import MemoirError
from ...streams.view_store import PostgresViewStore, ViewStore, open_view_store
from ...wire import tracing
from ...wire.auth import NatsAuth
from ...wire.redact import redact_url
from ..service._service import Service
from ..service.admin import Admin
from ..service.auth import Verifier, describe
from ..service.command_log import CommandLog
from ..service.embedded_nats import EmbeddedNats, free_port
from ..service.http import HttpGateway
from ..service.metrics import Metrics
from ..service.nats_door import NatsDoor
from ..service.regions import Fence, Region, regional_app, route_commands
from .appspec import load_app as load_app  # re-exported: callers load apps through the server module too
from .archiving import archived, start_archiving
from .datadir import lock_data_dir, write_manifest
from .http_token import http_token
from .identity import embedded_identity, private_dir, write_private
from .logs import configure
from .settings import Settings, nats_url_file
from .storage import storage_full
from .tuning import tune_gc, tune_nats

log = structlog.get_logger("memoir.server")

__all__ = ["Settings", "serve", "storage_full"]


async def serve(settings: Settings, *, ready: anyio.Event | None = None, auth: NatsAuth | None = None) -> None:
    """Run until SIGTERM or SIGINT (or cancellation), then shut down gracefully.

    `auth`: credentials and TLS for an external NATS and a nats:// journal (default: MEMOIR_NATS_*).
    """
    configure(settings.log_format, settings.log_level)
    tune_nats()
    app = load_app(settings.app)
    tracing.configure_from_env()  # after the app: one that installed its own tracer provider keeps it
    stopping = anyio.Event()  # set once a signal asked us to stop
    try:
        private_dir(settings.data)
        with lock_data_dir(
            settings.data, "one runtime per data dir: stop that one, or give this one another --data-dir"
        ):
            await _serve(settings, app, ready, stopping, NatsAuth.from_env() if auth is None else auth)
    except Exception as exc:  # only a full disk is handled here; anything else goes on up
        full = storage_full(exc, str(settings.data))
        if full is None:
            raise
        if not stopping.is_set():
            raise MemoirError(full) from None  # start-up (or serving) cut short by a full disk: one line
        log.warning("stopped without flushing everything: storage full", error=full)
    log.info("stopped")
    sys.stdout.flush()


async def _serve(
    settings: Settings, app: App, ready: anyio.Event | None, stopping: anyio.Event, auth: NatsAuth
) -> None:
    verifier = settings.verifier()  # a bad key file stops start-up before anything is opened
    if verifier is None and app.policy is not None:
        log.warning("the app has an access policy but no JWT keys are configured: guarded commands are unauthorized")
    async with contextlib.AsyncExitStack() as stack:
        nats = await _start_nats(stack, settings, auth)
        journal, views = await _open_stores(stack, settings, auth)
        svc = await _start_service(stack, settings, app, journal, views, nats)
        doors = _Doors(settings, svc, verifier)
        async with anyio.create_task_group() as side:  # the metrics endpoint
            metrics_url = await doors.serve_metrics(side)
            start_archiving(side, svc, settings)  # old events to object storage, if configured
            async with anyio.create_task_group() as serving:
                await doors.open(serving)
                # In a cluster, shards only now that commands reach us, and inside `serving`: the
                # shard manager's task group is left here, before this one (scopes must nest).
                async with svc.sharding():
                    await doors.open_http(serving)
                    # Handlers first, banner second: whoever reads "serving" may send SIGTERM at once.
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        print(_banner(settings, app, svc, nats, journal, verifier, metrics_url, doors.http), flush=True)
                        tune_gc()
                        if ready is not None:
                            ready.set()
                        await _wait_for_signal(signals, stopping)
                    await doors.close()
            side.cancel_scope.cancel()
        # Leaving the stack: consumers stop, the publisher flushes, the runtime closes, the journal
        # closes, the embedded server stops.


# -- phase 1: NATS, embedded or external -----------------------------------------------------------


@dataclass(frozen=True)
class _Nats:
    url: str
    where: str  # for the banner: "external", or the embedded server's store
    auth: NatsAuth  # the service's credential: the given one, or the embedded server's key


async def _start_nats(stack: contextlib.AsyncExitStack, settings: Settings, auth: NatsAuth) -> _Nats:
    """The external NATS as given, or an embedded server only the data dir's key gets into (see private.py)."""
    if settings.nats_url is not None:
        nats = _Nats(settings.nats_url, "external", auth)
    else:
        key = embedded_identity(settings.data)
        server = EmbeddedNats(settings.data / "nats", port=await _embedded_port(settings.data), nkey=key.public_key)
        await stack.enter_async_context(server)
        nats = _Nats(server.url, f"embedded, data {settings.data / 'nats'}", key.auth())
        write_private(nats_url_file(settings.data), nats.url)
    write_manifest(settings.data, settings.manifest(nats.url, embedded=settings.nats_url is None))
    return nats


async def _embedded_port(data_dir: Path) -> int:
    """Reuse the port of the last run, so clients keep working across restarts.

    After a crash the old server is being killed with us (see nats_server), so give it a
    few seconds to let go of the port before settling for a new one.
    """
    try:
        port = int(nats_url_file(data_dir).read_text().rsplit(":", 1)[1])
    except (OSError, ValueError, IndexError):
        return free_port()
    with anyio.move_on_after(5):
        while not _port_free(port):
            await anyio.sleep(0.1)
        return port
    log.warning("the previous NATS port is taken; using a new one", port=port)
    return free_port()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server (Go) binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- phases 2 and 3: the stores, the service -------------------------------------------------------


async def _open_stores(
    stack: contextlib.AsyncExitStack, settings: Settings, auth: NatsAuth
) -> tuple[Journal, ViewStore]:
    """The journal (a nats:// one with the given credential, never the embedded key) and the view store."""
    journal = await stack.enter_async_context(archived(settings, open_journal(settings.journal(), nats_auth=auth)))
    views = await stack.enter_async_context(open_view_store(settings.views()))
    return journal, views


async def _start_service(
    stack: contextlib.AsyncExitStack, settings: Settings, app: App, journal: Journal, views: ViewStore, nats: _Nats
) -> Service:
    regions = settings.region_settings()  # in a region: the app's views run over the region's replica
    service = Service(
        app if regions is None else regional_app(app),
        journal,
        nats_url=nats.url,
        prefix=settings.prefix if regions is None else regions.region_prefix(),
        view_store=views,
        streams=settings.streams(),
        mailbox_size=settings.mailbox_size,
        max_live_actors=settings.max_live_actors,
        passivate_after=settings.passivate_after,
        cluster=settings.cluster_config(),
        take_shards=False,  # once the NATS door takes commands: svc.sharding() in _serve
        nats_auth=nats.auth,
    )
    fence = None if regions is None else Fence(service, regions)  # before it serves: no turn unfenced
    sender = None if regions is None else route_commands(service, regions)  # consumers', timers', steps'
    svc = await stack.enter_async_context(service)
    assert svc.nc is not None
    if regions is not None and fence is not None and sender is not None:
        writer = (svc.runtime, journal)  # it serves moves: releases and adoptions of entities
        shared = svc.cluster is not None and isinstance(views, PostgresViewStore)  # one member runs each view
        region = Region(
            app,
            svc.nc,
            regions,
            streams=settings.streams(),
            view_store=views,
            writer=writer,
            router=svc.router,
            run_singleton=svc.run_singleton if shared else None,
        )
        fence.attach(region.primaries)
        sender.attach(svc.nc, region.primaries)
        await stack.enter_async_context(region)
    return svc


# -- phases 4 to 6: the doors opened, the signal awaited, the doors closed in order ----------------


def _http_gateway(settings: Settings, svc: Service, port: int, verifier: Verifier | None) -> HttpGateway:
    """Secure by default: JWTs when keys are set, else the data dir's token (made once), else only --http-insecure."""
    insecure = settings.http_insecure and verifier is None
    token = None if verifier is not None or insecure else http_token(settings.data)
    return HttpGateway(
        svc,
        port=port,
        host=settings.http_host,
        token=token,
        verifier=verifier,
        insecure=insecure,
        cors_origins=settings.cors_origins(),
    )


class _Doors:
    """How commands and reads reach the service: the NATS door, admin, HTTP and the metrics endpoint."""

    def __init__(self, settings: Settings, svc: Service, verifier: Verifier | None) -> None:
        assert svc.nc is not None
        self.settings, self.svc = settings, svc
        self.admin = Admin(svc)
        self.nats = NatsDoor(
            svc.runtime, svc.nc, prefix=svc.prefix, workers=settings.workers, router=svc.router, verifier=verifier
        )
        self.metrics = Metrics(svc, serving=self.nats.serving)
        self.metrics.forwarded = lambda: self.nats.forwarded
        self.nats.observe = self.metrics.observe
        if settings.log_commands:
            self.nats.command_log = CommandLog()
        port = settings.http_port
        self.http = None if port is None else _http_gateway(settings, svc, port, verifier)
        if self.http is not None:
            self.http.console.metrics = self.metrics  # the console shows this process's counters
            self.http.api.ready = self.metrics.ready  # /readyz on the HTTP port says what the metrics port's does
            self.http.api.door = self.nats  # commands take the NATS door's own path, in-process

    async def serve_metrics(self, side: TaskGroup) -> str:
        """The metrics endpoint in `side`, if asked for: its URL, or "off"."""
        if self.settings.metrics_port is None:
            return "off"
        port = await side.start(self.metrics.serve, self.settings.metrics_port, self.settings.metrics_host)
        return f"http://{self.settings.metrics_host}:{port}/metrics"

    async def open(self, serving: TaskGroup) -> None:
        await self.admin.start()
        await serving.start(self.nats.run)

    async def open_http(self, serving: TaskGroup) -> None:
        if self.http is not None:  # after the NATS door: HTTP commands go through it
            await serving.start(self.http.run)

    async def close(self) -> None:
        """In order: no door closes while another still sends through it."""
        if self.http is not None:
            await self.http.stop()  # first: its commands still need the NATS door
        await self.admin.stop()
        await self.nats.stop_taking()  # no new commands from clients
        await self.svc.hand_off()  # in a cluster: shards go to the others; forwards still reach us
        await self.nats.stop()  # the workers finish what they hold, then return


async def _wait_for_signal(signals: AsyncIterator[int], stopping: anyio.Event) -> None:
    async for signum in signals:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stopping.set()
        return


def _banner(
    settings: Settings,
    app: App,
    svc: Service,
    nats: _Nats,
    journal: Journal,
    verifier: Verifier | None,
    metrics_url: str,
    http: HttpGateway | None,
) -> str:
    """The one line that says it serves, and what: clients and tests wait for it."""
    member = (
        "" if svc.cluster is None else f"; cluster member {svc.cluster.member_id} of {svc.cluster.config.shards} shards"
    )
    return (
        f"memoir: serving {app.name} ({', '.join(sorted(svc.runtime.models))};"
        f" views: {', '.join(svc.views) or 'none'}; consumers: {', '.join(svc.consumers) or 'none'})"
        f" on {redact_url(nats.url)} ({nats.where}) as {settings.prefix}.cmd.<type>.<id>.<command>;"
        f" journal {journal.url}; metrics {metrics_url}; tokens {describe(verifier)}{member}"
        f"{http.banner() if http else ''}"
    )
