"""Storage URLs, parsed in one place for the journals and the view stores."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ..model.errors import ConfigError
from ..wire.redact import redact_url

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite://:memory:`; options as query."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    path = (parts.netloc + parts.path) if parts.netloc else parts.path[1:]
    if not path:
        raise ConfigError(f"sqlite URL has no path: {url!r} (try sqlite:///memoir.db)")
    opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, opts


def parse_postgres_url(url: str) -> tuple[str, str]:
    """The asyncpg DSN (without our options) and the schema name."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    opts = parse_qs(parts.query)
    schema = opts.pop("schema", ["memoir"])[-1]
    if not _IDENT.match(schema):
        raise ConfigError(f"schema {schema!r} must be a lowercase SQL identifier (a-z, 0-9, _)")
    query = "&".join(f"{k}={v[-1]}" for k, v in opts.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), schema


def postgres_where(dsn: str) -> str:
    """host:port/db of a DSN, never its password: safe for logs and errors."""
    p = urlsplit(dsn)
    return f"{p.hostname}:{p.port or 5432}{p.path}"
