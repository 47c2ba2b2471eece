"""`memoir run`: the runtime as a process (its settings and loop live in `serve/process`)."""

from __future__ import annotations

import argparse
from typing import Any

from ...process.identity import owner_only_umask
from ...process.run import serve
from .. import auth_flags
from ..base import Subparsers, command, where
from ..target import run_settings


async def run(args: argparse.Namespace) -> int:
    if args.app_spec:
        args.app = args.app_spec
    owner_only_umask()  # the data dir, journal, view store and NATS store: 0700/0600 (see private.py)
    await serve(run_settings(args), auth=auth_flags.from_args(args))
    return 0


class _Joined(argparse.Action):
    """A repeatable flag whose values join into one comma-separated setting, as its variable reads."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None) -> None:
        before = getattr(ns, self.dest, None)
        setattr(ns, self.dest, f"{before},{value}" if before else value)


def add(sub: Subparsers) -> None:
    r = command(
        sub,
        "run",
        "start the runtime as a process",
        "memoir run                          # the example entities; embedded NATS and SQLite in ./.memoir",
        "memoir run shop:app                 # the App named app in ./shop.py",
        "memoir run shop:app --data-dir /var/lib/shop --metrics-port 9090",
        "memoir run --journal postgresql://memoir@db/shop --nats-url nats://nats:4222",
        client=False,
        description="Host an app's entities, views and consumers, serving commands over NATS until SIGTERM/SIGINT.",
    )
    r.add_argument(
        "app_spec", nargs="?", metavar="APP", help="the App as module:attribute, e.g. shop:app (default entities:app)"
    )
    where(r, app=False)
    # The run-only options: add new ones here (and a field to process/settings.py).
    g = r.add_argument_group("runtime (each also a MEMOIR_* environment variable)")
    g.add_argument("--view-store", dest="view_store_url", help="view store URL (default SQLite in the data dir)")
    g.add_argument("--log-format", choices=["auto", "console", "json"], help="log format (default auto)")
    g.add_argument("--log-level", help="debug, info, warning or error (default info)")
    g.add_argument(
        "--log-commands",
        action="store_true",
        default=None,
        help="a log line per command served (type, id, command, outcome, ms, seq, trace id) at level"
        " `command`, whatever --log-level says",
    )
    g.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free port)")
    g.add_argument("--metrics-host", help="the metrics endpoint's address (default 127.0.0.1; 0.0.0.0 in a container)")
    g.add_argument("--http-port", type=int, help="serve the HTTP API on this port (0: any free port; default off)")
    g.add_argument("--http-host", help="the HTTP API's address (default 127.0.0.1; 0.0.0.0 in a container)")
    g.add_argument(
        "--http-insecure",
        action="store_true",
        default=None,
        help="let HTTP requests in without a credential (default: a JWT if keys are set, else the data dir's"
        " http.token as 'Authorization: Bearer …')",
    )
    g.add_argument(
        "--http-cors-origin",
        dest="http_cors_origins",
        action=_Joined,
        metavar="ORIGIN",
        help="a web origin (https://shop.example) whose pages may call the HTTP API; repeat for more"
        " (MEMOIR_HTTP_CORS_ORIGINS: comma-separated). Other pages get 403",
    )
    g.add_argument("--mailbox-size", type=int, help="commands queued per entity before `overloaded` (default 256)")
    g.add_argument("--max-live-actors", type=int, help="entities kept in memory, least recently used out (100000)")
    g.add_argument("--passivate-after", type=float, help="seconds an idle entity stays in memory (default 300)")
    g.add_argument("--workers", type=int, help="NATS requests served at once (default 256)")
    s = r.add_argument_group("event streams")
    s.add_argument("--stream-storage", choices=["file", "memory"], help="storage (default file)")
    s.add_argument("--stream-replicas", type=int, help="replicas (default 1; 3 on a NATS cluster)")
    s.add_argument("--stream-max-age", type=float, help="seconds a message is kept (default 0: forever)")
    s.add_argument("--stream-duplicate-window", type=float, help="seconds JetStream remembers message ids (120)")
    a = r.add_argument_group("archive (old events in object storage; docs/guides/archive.md)")
    a.add_argument("--archive-url", help="file:///dir, s3://bucket/prefix, gs://…, az://… (default: no archive)")
    a.add_argument("--archive-after", type=float, help="seconds an event stays in the journal at least (604800)")
    a.add_argument("--archive-interval", type=float, help="seconds between the archiver's passes (default 300)")
    a.add_argument(
        "--archive-export", action="store_true", default=None, help="also export the journal continuously as files"
    )
    rg = r.add_argument_group("regions (docs/guides/regions.md)")
    rg.add_argument("--region", help="this process's region: the name of its NATS cluster (gateways join regions)")
    rg.add_argument("--regions", help="every region, comma-separated, this one included (e.g. eu,us)")
    rg.add_argument("--region-pinned", help="type=region pairs, comma-separated: those types' primary region")
    rg.add_argument("--region-home", help="the region keeping first-write claims (default: the first of --regions)")
    c = r.add_argument_group("cluster")
    c.add_argument(
        "--cluster",
        action="store_true",
        default=None,
        help="share the entity space with the other `memoir run` processes on this NATS"
        " (needs a postgresql:// or nats:// journal)",
    )
    c.add_argument("--shards", type=int, help="shard count, fixed for the cluster's life (default 256)")
    c.add_argument("--lease-ttl", type=float, help="seconds before a dead member's shards move (default 3)")
    j = r.add_argument_group("verified callers (bearer JWTs; the HMAC secret also as MEMOIR_JWT_SECRET)")
    j.add_argument("--jwt-secret-file", help="a file holding the HMAC secret (at least 32 bytes)")
    j.add_argument("--jwt-public-keys", help="PEM public key files, comma-separated (RSA, EC, Ed25519)")
    j.add_argument("--jwt-jwks-file", help="a JWKS file of public keys, chosen by the token's kid")
    j.add_argument("--jwt-audience", help="the aud every token must carry")
    j.add_argument("--jwt-issuer", help="the iss every token must carry")
    j.add_argument("--jwt-leeway", type=float, help="seconds of clock skew allowed on exp/nbf (default 30)")
    j.add_argument("--jwt-max-header", type=int, help="bytes of Authorization header accepted (default 8192)")
    r.set_defaults(fn=run)
