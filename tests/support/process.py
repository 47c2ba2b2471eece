"""`memoir run` as a real process, driven as a user drives it: started, signalled, asked over NATS and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nats

from runtime.serve.process.http_token import read_http_token
from runtime.serve.process.identity import local_auth
from runtime.wire.auth import NatsAuth

ROOT = Path(__file__).resolve().parents[2]  # the repository (tests/support/process.py)
MEMOIR = [sys.executable, "-m", "runtime.serve.cli"]


class RunningRuntime:
    """One `memoir run` child on a data directory: `start()` returns once its banner says it serves."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.banner = ""

    def start(self, timeout: float = 30.0) -> RunningRuntime:
        with open(self.data.parent / f"{self.data.name}.log", "a") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [*MEMOIR, "run", "--data-dir", str(self.data), "--log-format", "json", *self.extra],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline()  # printed once it serves
        assert self.banner.startswith("memoir: serving"), f"memoir run did not start: {self.banner!r}"
        return self

    @property
    def nats_url(self) -> str:
        return (self.data / "nats.url").read_text().strip()

    @property
    def auth(self) -> NatsAuth:
        """The embedded server admits only the holder of the data dir's key."""
        return local_auth(self.data)

    @property
    def http_auth(self) -> dict[str, str]:
        """The header `--http-port` admits (without JWT keys): the token `memoir run` keeps in the data dir."""
        token = read_http_token(self.data)
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def connect(self) -> nats.NATS:
        return await nats.connect(self.nats_url, **self.auth.options())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.close()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MEMOIR, *args, "--data-dir", str(self.data)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
