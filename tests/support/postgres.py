"""Where the PostgreSQL tests find their server, and what to do when it is not there.

Tests take the `postgres_url` fixture (tests/conftest.py), which calls `need_postgres`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .ci import in_ci

POSTGRES_URL = os.environ.get("MEMOIR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reachable() -> str | None:
    """None if PostgreSQL answers, else why not."""
    p = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((p.hostname or "127.0.0.1", p.port or 5432), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable at {p.hostname}:{p.port or 5432}: {exc}"


def need_postgres() -> str:
    """The server's URL; skip when none answers, except in CI (CI=true), where it must be there."""
    why = postgres_reachable()
    if why is not None:
        if in_ci():
            pytest.fail(f"{why} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(why)
    return POSTGRES_URL


def schema_for(prefix: str, directory: Path) -> str:
    """A schema name private to one test, from its tmp directory (the same directory, the same schema).

    Under pytest-xdist each worker numbers its tmp directories on its own, so two workers can
    give two tests the same directory name: the worker's id keeps their schemas apart.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return prefix + worker + "".join(ch for ch in directory.name.lower() if ch.isalnum())[-40:]
