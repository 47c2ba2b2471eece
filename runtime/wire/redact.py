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
