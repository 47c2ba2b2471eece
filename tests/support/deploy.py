"""The shipped deployment files (deploy/), as the deployment tests read them."""

from __future__ import annotations

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def env_file() -> dict[str, str]:
    """deploy/memoir.env as a mapping: every `KEY=value` line, comments and blanks skipped."""
    out = {}
    for line in (DEPLOY / "memoir.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out
