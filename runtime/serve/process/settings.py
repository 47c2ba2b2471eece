"""Every option of `memoir run`, in one plain class: a field each, with its default.

Each field is also a `MEMOIR_<NAME>` environment variable and, when `memoir run` has a flag for
it (cli/commands/run.py), a flag of the same name. To add a setting: a field here, a flag there,
and a line in `check` if its type alone does not say what is valid. The CLI's client commands
read the same class, over what the data dir's manifest recorded (cli/target.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec

from ...model.errors import ConfigError
from ...streams.publisher import StreamSettings
from ...wire.protocol import check_prefix
from ...wire.redact import had_secrets, without_secrets
from ..service._service import SHARED_JOURNALS
from ..service.auth import Verifier, load_verifier
from ..service.cluster import ClusterConfig, LeaseConfig
from ..service.regions import RegionSettings
from .datadir import Manifest

__all__ = ["Settings", "nats_url_file"]

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


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
    log_commands: bool = False  # a line per command served, at level "command" (service/command_log.py)
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
    http_insecure: bool = False  # no credential needed (logged): without it, JWTs or the data dir's http.token
    http_cors_origins: str | None = None  # web origins whose pages may call it, comma-separated; others get 403
    # tiered storage (runtime/archive): events older than a snapshot and `archive_after` seconds move to
    # object storage (file:///dir, s3://bucket/prefix, gs://…, az://…); reads fall through to it
    archive_url: str | None = None
    archive_after: float = 7 * 86400.0
    archive_interval: float = 300.0  # seconds between the archiver's passes
    archive_export: bool = False  # also write the whole journal, continuously, as files under export/

    # regions (docs/guides/regions.md): this process serves one region of several, NATS clusters joined by gateways
    region: str | None = None  # this process's region: its NATS cluster's name
    regions: str | None = None  # every region, comma-separated, this one included
    region_pinned: str | None = None  # type=region pairs, comma-separated: each such type's primary region
    region_home: str | None = None  # the region keeping the first-write claims (default: the first of regions)

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
        settings.check()
        return settings

    def check(self) -> None:
        """What a field's type cannot say: ranges, choices, and settings that need each other."""
        check_prefix(self.prefix)
        if self.mailbox_size < 1 or self.max_live_actors < 1 or self.workers < 1:
            raise ConfigError("mailbox_size, max_live_actors and workers must be at least 1")
        if self.stream_storage not in ("file", "memory"):
            raise ConfigError(f"stream_storage must be file or memory, got {self.stream_storage!r}")
        if self.stream_replicas < 1 or self.stream_max_age < 0 or self.stream_duplicate_window <= 0:
            raise ConfigError("stream_replicas must be >= 1, stream_max_age >= 0, stream_duplicate_window > 0")
        self.cors_origins()  # checks each origin
        if self.archive_after < 0 or self.archive_interval <= 0:
            raise ConfigError("archive_after must be >= 0 seconds and archive_interval > 0")
        if self.archive_export and not self.archive_url:
            raise ConfigError("archive_export needs archive_url: the files are written there")
        if self.archive_url and self.journal().split(":", 1)[0] in ("nats", "tls"):
            raise ConfigError(
                "archive_url needs a SQLite or PostgreSQL journal: a nats:// journal is the event streams"
                " views follow, and its events cannot be dropped from under them"
            )
        if self.cluster:
            self.cluster_config()  # checks shards and lease_ttl
            scheme = self.journal().split(":", 1)[0]
            if scheme not in SHARED_JOURNALS:
                raise ConfigError(
                    "a cluster needs a journal every member shares: postgresql:// or nats://, not"
                    f" {scheme}:// (a SQLite or memory journal belongs to one process; set --journal)"
                )

    def region_settings(self) -> RegionSettings | None:
        """The region this process serves (`--region` with `--regions`), or None."""
        if self.region is None and self.regions is None:
            return None
        if not self.region or not self.regions:
            raise ConfigError("regions need both region (this one) and regions (all, comma-separated)")
        pinned: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in (self.region_pinned or "").split(","))):
            entity_type, sep, region = pair.partition("=")
            if not sep or not entity_type or not region:
                raise ConfigError(f"region_pinned takes type=region pairs, got {pair!r}")
            pinned[entity_type.strip()] = region.strip()
        return RegionSettings(
            name=self.region,
            regions=tuple(r.strip() for r in self.regions.split(",") if r.strip()),
            prefix=self.prefix,
            pinned=pinned,
            home=self.region_home,
            replicas=self.stream_replicas,
        )

    def cluster_config(self) -> ClusterConfig | None:
        """The cluster this process joins (its buckets replicated like the streams), or None."""
        if not self.cluster:
            return None
        regions = self.region_settings()  # a region's members are a cluster of their own
        return ClusterConfig(
            name=self.prefix if regions is None else regions.cluster_name(),
            shards=self.shards,
            replicas=self.stream_replicas,
            lease=LeaseConfig(ttl=self.lease_ttl),
        )

    def cors_origins(self) -> list[str]:
        """The origins of `http_cors_origins`, each `scheme://host[:port]` as a browser sends it."""
        origins = [o.strip().rstrip("/") for o in (self.http_cors_origins or "").split(",") if o.strip()]
        for origin in origins:
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(f"http_cors_origins: {origin[:80]!r} is not an origin like https://shop.example:8443")
        return origins

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

    def manifest(self, nats_url: str, *, embedded: bool) -> Manifest:
        """What this run uses, for the CLI's commands on the same data dir (paths absolute: they may run elsewhere)."""
        absolute = msgspec.structs.replace(self, data_dir=str(self.data.resolve()))
        urls = {
            "journal_url": _absolute_sqlite(absolute.journal()),
            "view_store_url": _absolute_sqlite(absolute.views()),
            "nats_url": nats_url,
        }
        archive = without_secrets(self.archive_url) if self.archive_url else None
        return Manifest(
            app=self.app,
            app_path=os.getcwd(),
            journal_url=without_secrets(urls["journal_url"]),  # where, never the password (no secret at rest)
            view_store_url=without_secrets(urls["view_store_url"]),
            prefix=self.prefix,
            nats_url=without_secrets(nats_url),
            embedded_nats=embedded,
            pid=os.getpid(),
            archive_url=archive,
            secrets_left_out=sorted(name for name, url in urls.items() if had_secrets(url)),
        )


def nats_url_file(data_dir: Path) -> Path:
    """Where `memoir run` writes its embedded server's URL, for the clients on the same data dir."""
    return data_dir / "nats.url"


def _absolute_sqlite(url: str) -> str:
    path = url.removeprefix("sqlite:///")
    if path == url or path.startswith(("/", ":memory:")):
        return url
    return f"sqlite:///{Path(path).resolve()}"
