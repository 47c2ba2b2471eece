"""Where `memoir send` finds the bearer token it sends: --token, --token-file, or MEMOIR_TOKEN."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...model.errors import ConfigError


def bearer_token(args: argparse.Namespace, env: dict[str, str] | None = None) -> str | None:
    """The JWT to send, or None; a token file that cannot be read or is empty is a ConfigError."""
    if getattr(args, "token", None):
        return str(args.token).strip()
    path = getattr(args, "token_file", None)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"the token file {path!r} is not UTF-8 text") from None
        if not token:
            raise ConfigError(f"the token file {path!r} is empty")
        return token
    return (os.environ if env is None else env).get("MEMOIR_TOKEN") or None
