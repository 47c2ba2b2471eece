"""The HTTP API's bearer token: a secret in the data dir, so only its owner can call `--http-port`.

`memoir run --http-port` without JWT keys admits a request only with `Authorization: Bearer
<token>`, the token being `http.token` beside `nats.nk`: 256 random bits, generated (0600) on the
first run and kept across restarts, so a client configured once keeps working. The data dir is
0700 (`identity.private_dir`): another local user cannot read it, and a web page cannot either.
Whoever reads it — `memoir` commands of the same user, the test fixtures — calls `read_http_token`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ...model.errors import ConfigError
from .identity import OWNER_ONLY, write_private

TOKEN_FILE = "http.token"


def http_token(data_dir: Path) -> str:
    """The data dir's HTTP token, generated on first use; the same on every later run."""
    path = data_dir / TOKEN_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & OWNER_ONLY:
        path.chmod(0o600)
    token = read_http_token(data_dir)
    if token is None or len(token) < 32:
        raise ConfigError(f"{path} holds no usable token (32 characters or more): remove it and restart")
    return token


def read_http_token(data_dir: Path) -> str | None:
    """The token a `memoir run` in `data_dir` checks, or None if it has none (HTTP off, or insecure)."""
    path = data_dir / TOKEN_FILE
    if not path.exists():
        return None
    if not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read {path}: the HTTP API's token belongs to the data dir's owner only")
    return path.read_text().strip()
