"""Whether the tests run in CI, where a missing service is a failure rather than a skip."""

from __future__ import annotations

import os


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
