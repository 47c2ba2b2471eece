"""`memoir run`: the runtime as a process.

With no NATS URL it starts an embedded nats-server (data in `{data_dir}/nats`,
its URL written to `{data_dir}/nats.url` so `memoir send` finds it); with no
journal URL it uses SQLite in the data directory. SIGTERM or SIGINT shut it
down gracefully: stop taking commands, finish the turns in flight, flush the
publisher, close the journal, exit 0. A SIGKILL loses nothing acknowledged:
every reply was sent after its events were durable.

A full disk is not a crash: starting on one is one line naming it (exit 2), and a
SIGTERM while full still exits 0 after flushing what could be flushed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from ...journal import open_journal
from ...model.app import App
from ...model.errors import ConfigError, MemoirError, Unavailable
from ...streams.publisher import StreamSettings
from ...streams.view_store import open_view_store
from ...wire.auth import NatsAuth
from ...wire.protocol import check_prefix
from ...wire.redact import redact_url
from ..service._service import SHARED_JOURNALS, Service
from ..service.admin import Admin
from ..service.auth import Verifier, describe, load_verifier
from ..service.cluster import ClusterConfig, LeaseConfig
from ..service.embedded_nats import EmbeddedNats, free_port
from ..service.http import HttpGateway
from ..service.metrics import Metrics
from ..service.nats_door import NatsDoor
from .appspec import load_app as load_app  # re-exported: callers load apps through the server module too
from .datadir import Manifest, lock_data_dir, write_manifest
from .identity import embedded_identity, private_dir, write_private
from .logs import configure
from .tuning import tune_gc, tune_nats

log = structlog.get_logger("memoir.server")


class Settings(msgspec.Struct, kw_only=True):
    """Every option of `memoir run`; each is also a MEMOIR_<NAME> environment variable."""

    app: str = "entities:app"
    data_dir: str = ".memoir"
    nats_url: str | None = None
    journal_url: str | None = None
    view_store_url: str | None = None
    prefix: str = "memoir"
    log_format: str = "auto"
    log_level: str = "info"
    metrics_port: int | None = None  # None: no metrics endpoint; 0: a free port
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, for Prometheus and the orchestrator's probes
    mailbox_size: int = 256
    max_live_actors: int = 100_000
    passivate_after: float = 300.0
    workers: int = 256  # NATS requests served at once
    # the per-type event streams the outbox publishes to (created or updated at start-up)
    stream_storage: str = "file"  # or "memory"
    stream_replicas: int = 1  # 3 on a JetStream cluster
    stream_max_age: float = 0.0  # seconds a message is kept; 0: forever (the journal has it anyway)
    stream_duplicate_window: float = 120.0  # seconds JetStream remembers message ids
    # scale-out: several `memoir run` processes share the entity space (PostgreSQL or JetStream journal)
    cluster: bool = False
    shards: int = 256  # fixed for the cluster's lifetime: recorded in NATS KV by its first member
    lease_ttl: float = 3.0  # seconds: a dead member's shards and singletons move after about this long
    # verified callers (auth.py): keys to check bearer JWTs with; an HMAC secret also from MEMOIR_JWT_SECRET
    jwt_secret_file: str | None = None
    jwt_public_keys: str | None = None  # PEM files, comma-separated
    jwt_jwks_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 30.0  # seconds of clock skew allowed
    jwt_max_header: int = 8192  # bytes of Authorization header accepted
    # the HTTP gateway (serve/http): commands, reads, live tails and /openapi.json beside NATS
    http_port: int | None = None  # None: no HTTP; 0: a free port
    http_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Environment variables first, flags (`overrides` that are not None) on top; values validated."""
        env = dict(os.environ if env is None else env)
        raw: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            value = env.get(f"MEMOIR_{field.name.upper()}")
            if value not in (None, ""):
                raw[field.name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"bad setting: {exc} (flags, or MEMOIR_* environment variables)") from None
        check_prefix(settings.prefix)
        if settings.mailbox_size < 1 or settings.max_live_actors < 1 or settings.workers < 1:
            raise ConfigError("mailbox_size, max_live_actors and workers must be at least 1")
        if settings.stream_storage not in ("file", "memory"):
            raise ConfigError(f"stream_storage must be file or memory, got {settings.stream_storage!r}")
        if settings.stream_replicas < 1 or settings.stream_max_age < 0 or settings.stream_duplicate_window <= 0:
            raise ConfigError("stream_replicas must be >= 1, stream_max_age >= 0, stream_duplicate_window > 0")
        if settings.cluster:
            settings.cluster_config()  # checks shards and lease_ttl
            scheme = settings.journal().split(":", 1)[0]
            if scheme not in SHARED_JOURNALS:
                raise ConfigError(
                    "a cluster needs a journal every member shares: postgresql:// or nats://, not"
                    f" {scheme}:// (a SQLite or memory journal belongs to one process; set --journal)"
                )
        return settings

    def cluster_config(self) -> ClusterConfig | None:
        """The cluster this process joins (its buckets replicated like the streams), or None."""
        if not self.cluster:
            return None
        return ClusterConfig(
            name=self.prefix, shards=self.shards, replicas=self.stream_replicas, lease=LeaseConfig(ttl=self.lease_ttl)
        )

    def verifier(self, env: dict[str, str] | None = None) -> Verifier | None:
        """The bearer-token verifier these settings describe, or None (no keys: tokens are not read)."""
        return load_verifier(
            secret=(os.environ if env is None else env).get("MEMOIR_JWT_SECRET"),
            secret_file=self.jwt_secret_file,
            public_keys=self.jwt_public_keys,
            jwks_file=self.jwt_jwks_file,
            audience=self.jwt_audience,
            issuer=self.jwt_issuer,
            leeway=self.jwt_leeway,
            max_header=self.jwt_max_header,
        )

    def streams(self) -> StreamSettings:
        return StreamSettings(
            storage=self.stream_storage,
            replicas=self.stream_replicas,
            max_age=self.stream_max_age,
            duplicate_window=self.stream_duplicate_window,
        )

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    def journal(self) -> str:
        """The journal URL; a JetStream journal's streams get `stream_replicas` unless the URL says."""
        url = self.journal_url or f"sqlite:///{self.data / 'journal.db'}"
        if url.split(":", 1)[0] in ("nats", "tls") and "replicas=" not in url and self.stream_replicas != 1:
            url += f"{'&' if '?' in url else '?'}replicas={self.stream_replicas}"
        return url

    def views(self) -> str:
        """The view store; in a cluster on PostgreSQL, the journal's database (every member reads it)."""
        if self.view_store_url:
            return self.view_store_url
        if self.cluster and self.journal().split(":", 1)[0] in ("postgresql", "postgres"):
            return self.journal()
        return f"sqlite:///{self.data / 'views.db'}"


def nats_url_file(data_dir: Path) -> Path:
    return data_dir / "nats.url"


def manifest(settings: Settings, nats_url: str, *, embedded: bool) -> Manifest:
    """What this run uses, for the CLI's commands on the same data dir (paths absolute: they may run elsewhere)."""
    absolute = msgspec.structs.replace(settings, data_dir=str(settings.data.resolve()))
    return Manifest(
        app=settings.app,
        app_path=os.getcwd(),
        journal_url=_absolute_sqlite(absolute.journal()),
        view_store_url=_absolute_sqlite(absolute.views()),
        prefix=settings.prefix,
        nats_url=nats_url,
        embedded_nats=embedded,
        pid=os.getpid(),
    )


def _absolute_sqlite(url: str) -> str:
    path = url.removeprefix("sqlite:///")
    if path == url or path.startswith(("/", ":memory:")):
        return url
    return f"sqlite:///{Path(path).resolve()}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server (Go) binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


_JETSTREAM_NO_STORAGE = 10069  # JetStream's "insufficient storage resources"


def storage_full(exc: BaseException, where: str = "the data directory") -> str | None:
    """One line naming a full disk, if that is what `exc` (or an error in its group or chain) is."""
    if isinstance(exc, BaseExceptionGroup):
        return next((m for e in exc.exceptions if (m := storage_full(e, where)) is not None), None)
    if isinstance(exc, Unavailable) and exc.reason == "storage full":
        return exc.message
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"storage full: {exc.filename or where}: {exc.strerror}"
    if getattr(exc, "err_code", None) == _JETSTREAM_NO_STORAGE:
        return f"storage full: NATS JetStream has no storage left ({exc})"
    if isinstance(exc, MemoirError) and "no space left on device" in str(exc).lower():
        return "storage full: " + next(
            (line.strip() for line in str(exc).splitlines() if "no space left" in line.lower()), str(exc)
        )
    cause = exc.__cause__ or exc.__context__
    return None if cause is None else storage_full(cause, where)


def _member(svc: Service) -> str:
    if svc.cluster is None:
        return ""
    return f"; cluster member {svc.cluster.member_id} of {svc.cluster.config.shards} shards"


async def serve(settings: Settings, *, ready: anyio.Event | None = None, auth: NatsAuth | None = None) -> None:
    """Run until SIGTERM or SIGINT (or cancellation), then shut down gracefully.

    `auth`: credentials and TLS for an external NATS and a nats:// journal (default: MEMOIR_NATS_*).
    """
    configure(settings.log_format, settings.log_level)
    tune_nats()
    app = load_app(settings.app)
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
        nats_url, where, nats_auth = settings.nats_url, "external", auth
        if nats_url is None:  # only the holder of the data dir's key gets in (see private.py)
            key = embedded_identity(settings.data)
            server = EmbeddedNats(settings.data / "nats", port=await _embedded_port(settings.data), nkey=key.public_key)
            await stack.enter_async_context(server)
            nats_url, where, nats_auth = server.url, f"embedded, data {settings.data / 'nats'}", key.auth()
            write_private(nats_url_file(settings.data), nats_url)
        write_manifest(settings.data, manifest(settings, nats_url, embedded=settings.nats_url is None))
        journal = await stack.enter_async_context(open_journal(settings.journal(), nats_auth=auth))
        views = await stack.enter_async_context(open_view_store(settings.views()))
        svc = await stack.enter_async_context(
            Service(
                app,
                journal,
                nats_url=nats_url,
                prefix=settings.prefix,
                view_store=views,
                streams=settings.streams(),
                mailbox_size=settings.mailbox_size,
                max_live_actors=settings.max_live_actors,
                passivate_after=settings.passivate_after,
                cluster=settings.cluster_config(),
                take_shards=False,  # once the NATS door takes commands, below
                nats_auth=nats_auth,
            )
        )
        assert svc.nc is not None
        admin = Admin(svc)
        door = NatsDoor(
            svc.runtime, svc.nc, prefix=settings.prefix, workers=settings.workers, router=svc.router, verifier=verifier
        )
        metrics = Metrics(svc, serving=door.serving)
        metrics.forwarded = lambda: door.forwarded
        door.observe = metrics.observe
        http = (
            None if settings.http_port is None else HttpGateway(svc, port=settings.http_port, host=settings.http_host)
        )
        async with anyio.create_task_group() as side:  # the metrics endpoint
            metrics_url = "off"
            if settings.metrics_port is not None:
                port = await side.start(metrics.serve, settings.metrics_port, settings.metrics_host)
                metrics_url = f"http://{settings.metrics_host}:{port}/metrics"
            async with anyio.create_task_group() as serving:
                await admin.start()
                await serving.start(door.run)
                await svc.take_shards()  # in a cluster: given shards only now that commands reach us
                if http is not None:  # after the NATS door: HTTP commands go through it
                    await serving.start(http.run)
                # Handlers first, banner second: whoever reads "serving" may send SIGTERM at once.
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    print(
                        f"memoir: serving {app.name} ({', '.join(sorted(svc.runtime.models))};"
                        f" views: {', '.join(svc.views) or 'none'}; consumers: {', '.join(svc.consumers) or 'none'})"
                        f" on {redact_url(nats_url)} ({where}) as {settings.prefix}.cmd.<type>.<id>.<command>;"
                        f" journal {journal.url}; metrics {metrics_url}; tokens {describe(verifier)}{_member(svc)}"
                        f"{http.banner() if http else ''}",
                        flush=True,
                    )
                    tune_gc()
                    if ready is not None:
                        ready.set()
                    async for signum in signals:
                        log.info("shutting down", signal=signal.Signals(signum).name)
                        stopping.set()
                        break
                if http is not None:
                    await http.stop()  # first: its commands still need the NATS door
                await admin.stop()
                await door.stop_taking()  # no new commands from clients
                await svc.hand_off()  # in a cluster: shards go to the others; forwards still reach us
                await door.stop()  # the workers finish what they hold, then return
            side.cancel_scope.cancel()
        # Leaving the stack: consumers stop, the publisher flushes, the runtime closes, the journal
        # closes, the embedded server stops.
