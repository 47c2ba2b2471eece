"""Schemathesis, every check, against a real `memoir run --http-port` serving the example app.

It generates requests from /openapi.json — valid and invalid ones, other methods, no credential —
and holds the server to the document: statuses, content types, response schemas, Allow headers,
valid requests accepted and invalid ones refused. Bounded (a fixed seed, a few examples per
operation, one worker) so it takes about a minute on two cores. The live tails (`/events/{type}`)
never end, so they are left out here; their frames are checked against the document in
test_routes.py.

Expected answers to a valid request include 410 and 422: an entity may refuse a well-formed
command in its current state (`rejected`), and an Idempotency-Key sent again with another body
is refused (`key_reused`); both are documented per operation.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.process import RunningRuntime

from runtime.serve.process.http_token import read_http_token
from runtime.serve.service.embedded_nats import free_port

CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "410", "422"]
"""


def test_schemathesis_with_every_check_finds_nothing(tmp_path: Path) -> None:
    port = free_port()
    rt = RunningRuntime(tmp_path / "data", "--http-port", str(port)).start()
    try:
        token = read_http_token(rt.data)
        assert token is not None
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        result = subprocess.run(
            [
                *(sys.executable, "-m", "schemathesis.cli", "--config-file", "schemathesis.toml", "--no-color"),
                *("run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all"),
                *("-H", f"Authorization: Bearer {token}", "--exclude-path-regex", "^/events/"),
                *("--max-examples", "20", "--seed", "1", "--workers", "1", "--request-timeout", "10"),
                *("--generation-database", "none"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    finally:
        assert rt.stop() == 0
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts is not None and int(counts[2]) > 500, result.stdout[-2000:]  # it did test
