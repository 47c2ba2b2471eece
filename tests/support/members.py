"""`memoir run --cluster` members as processes, for the cluster scenarios, and the wait until they
hold every shard (which says how each member is doing when they do not)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats.errors

from runtime import MemoirError
from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, settled
from runtime.wire.nats import close_quietly, connect

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL = 2.0


@dataclass
class Member:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)}
            )

    def signal(self, sig: int) -> int | None:
        proc, self.proc = self.proc, None
        assert proc is not None
        proc.send_signal(sig)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def pause(self) -> None:
        """SIGSTOP: the process stays, frozen, until `resume`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @classmethod
    def member(cls, i: int, url: str, journal: str, view_store: str, prefix: str, tmp: Path, *app: str) -> Member:
        """Member `m{i}` of a test cluster: `memoir run [app] --cluster` with three stream replicas."""
        argv = [sys.executable, "-m", "runtime.serve.cli", "run", *app, "--cluster"]
        argv += ["--nats-url", url, "--journal", journal, "--view-store", view_store, "--prefix", prefix]
        argv += ["--data-dir", str(tmp / f"m{i}"), "--stream-replicas", "3", "--lease-ttl", str(LEASE_TTL)]
        argv += ["--log-format", "json"]
        return cls(f"m{i}", argv, tmp / f"m{i}.log")


async def wait_cluster(url: str, prefix: str, members: int, procs: Sequence[Member] = (), timeout: float = 60) -> None:
    """Wait until `members` members hold every shard; if they do not, say how each member process is doing.

    Three members creating the same R3 streams at once can take a while on a loaded 2-core machine;
    the window is generous, and a failure shows each member's exit status and last log lines. A
    read that times out (a node still catching up after a fault) is asked again; a member of
    `procs` that exits ends the wait at once.
    """
    config = ClusterConfig(name=prefix, lease=LeaseConfig(ttl=LEASE_TTL))
    started = time.monotonic()
    nc = await connect(url)
    try:
        while True:
            try:
                await settled(nc, config, members, timeout=2)
                return
            except (MemoirError, nats.errors.Error, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
            exited = [m.name for m in procs if m.proc is not None and m.proc.poll() is not None]
            if exited or time.monotonic() - started > timeout:
                break
    finally:
        await close_quietly(nc)
    why = f"{', '.join(exited)} exited" if exited else "no more time"
    report = [f"{last} (asked for {time.monotonic() - started:.0f} s in all; stopped asking: {why})"]
    for m in procs:
        code = None if m.proc is None else m.proc.poll()
        status = "stopped by the test" if m.proc is None else "alive" if code is None else f"exited {code}"
        tail = m.log.read_text(errors="replace").splitlines()[-8:] if m.log.exists() else []
        report += [f"{m.name}: {status}", *(f"  {line[:300]}" for line in tail)]
    raise AssertionError("\n".join(report))
