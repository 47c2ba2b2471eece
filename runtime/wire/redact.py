"""One way to show a URL without its secrets, for every message, log line and banner.

Any scheme (`nats://`, `tls://`, `postgresql://`, …) and comma-separated server lists: a password
becomes `user:***@`, a lone user-info part (a NATS token) `***@`, and query options that carry a
secret (`password=`, `token=`, …) `password=***`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SECRET_QUERY = re.compile(r"(?i)\b(password|passwd|pass|token|secret|sslpassword|access_key|key)=[^&;#]*")


def redact_url(url: str) -> str:
    """`url` fit for a message: user-info and secret query options replaced by `***`."""
    return ",".join(_one(part.strip()) for part in url.split(","))


def _one(part: str) -> str:
    try:
        p = urlsplit(part)
        query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", p.query)
        if "@" not in p.netloc:
            return urlunsplit((p.scheme, p.netloc, p.path, query, p.fragment))
        host = p.netloc.rpartition("@")[2]
        who = f"{p.username}:***" if p.password is not None else "***"
        return urlunsplit((p.scheme, f"{who}@{host}", p.path, query, p.fragment))
    except ValueError:
        return "<unparsable URL>"


def without_secrets(url: str) -> str:
    """`url` fit to be stored: passwords, NATS tokens and secret query options left out, not masked.

    Where and as whom stay (a PostgreSQL user, a NATS user), so a client that reads the URL back
    adds the credential from its own environment; a lone user-info part of a NATS URL is a token.
    """
    return ",".join(_stripped(part.strip()) for part in url.split(","))


def _stripped(part: str) -> str:
    try:
        p = urlsplit(part)
    except ValueError:
        return "<unparsable URL>"
    query = "&".join(kv for kv in p.query.split("&") if kv and not _SECRET_QUERY.fullmatch(kv))
    if "@" not in p.netloc and query == p.query:
        return part  # nothing to leave out (and `sqlite:///…` keeps its empty authority)
    host = p.netloc.rpartition("@")[2]
    token_scheme = p.scheme.lower() in {"nats", "tls", "ws", "wss"}
    user = p.username if p.username and not (token_scheme and p.password is None) else None
    netloc = f"{user}@{host}" if user else host
    return urlunsplit((p.scheme, netloc, p.path, query, p.fragment))


def had_secrets(url: str) -> bool:
    """Whether `without_secrets` would leave anything out of `url`."""
    return without_secrets(url) != ",".join(part.strip() for part in url.split(","))


def url_secrets(url: str) -> list[str]:
    """The secrets written into a URL (passwords, tokens), to scrub from any text that quotes it."""
    found: list[str] = []
    for part in url.split(","):
        try:
            p = urlsplit(part.strip())
        except ValueError:
            continue
        found += [s for s in (p.password, p.username if p.password is None else None) if s]
        found += [m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(p.query)]
    return [s for s in found if s]


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with each of `secrets` replaced by `***` (longest first, so none is left half-shown)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
