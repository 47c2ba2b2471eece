"""CPU-capped processes for benchmarks: each in a cgroup of its own, capped from its first instruction.

cgroup v1 (`cpu/<g>/cpu.cfs_quota_us` and `cpuacct/<g>/cpuacct.usage`, the hierarchies mounted
apart or together) or v2 (`<g>/cpu.max` and `cpu.stat`'s `usage_usec`), whichever can be
written here. A process joins its group through `sh`, which writes its own pid into the group
and then execs the real command, so nothing of the command ever runs uncapped.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
# The enforcement period. The kernel's default, 100 ms, lets a member capped at a quarter of a core
# run 25 ms and then stall 75 ms: every command in flight waits out the stall, so closed-loop
# clients measure the stalls, not the CPU. A 10 ms period spreads the same share finely (a slower
# CPU rather than a stop-and-go one) at a small cost in scheduler work.
PERIOD_US = 10_000


def _writable_dir(path: Path) -> bool:
    probe = path / f"memoir-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


@dataclass
class Caps:
    """Makes capped groups and reads their CPU use; `cleanup()` removes every group it made."""

    version: str  # "v1" or "v2"
    cpu_root: Path
    acct_root: Path
    made: list[str] = field(default_factory=list)

    @classmethod
    def find(cls) -> Caps | str:
        """The writable cgroup kind, or a sentence saying why there is none."""
        cpu, acct = ROOT / "cpu", ROOT / "cpuacct"
        if (ROOT / "cpu,cpuacct").is_dir():
            cpu = acct = ROOT / "cpu,cpuacct"
        if (cpu / "cpu.cfs_quota_us").exists() and _writable_dir(cpu) and _writable_dir(acct):
            return cls("v1", cpu, acct)
        for v2 in (ROOT, ROOT / "unified"):
            controllers = v2 / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split() and _writable_dir(v2):
                with contextlib.suppress(OSError):
                    (v2 / "cgroup.subtree_control").write_text("+cpu")
                if "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
                    return cls("v2", v2, v2)
        return "neither cgroup v1 (cpu.cfs_quota_us) nor v2 (cpu.max) is writable here: no caps possible"

    @property
    def what(self) -> str:
        return (
            f"cgroup v1 {self.cpu_root}/<g>/cpu.cfs_quota_us"
            if self.version == "v1"
            else f"cgroup v2 {self.cpu_root}/<g>/cpu.max"
        )

    def make(self, name: str, cores: float) -> str:
        quota = int(cores * PERIOD_US)
        cpu = self.cpu_root / name
        cpu.mkdir(exist_ok=True)
        self.made.append(name)
        if self.version == "v1":
            (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            (self.acct_root / name).mkdir(exist_ok=True)
        else:
            (cpu / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        return name

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run inside group `name` from its first instruction: sh joins, then execs."""
        dirs = {self.cpu_root / name, self.acct_root / name}
        joins = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in sorted(dirs))
        return ["sh", "-c", f'{joins} && exec "$@"', "sh", *argv]

    def usage_us(self, name: str) -> float:
        """CPU time the group has used, in microseconds."""
        if self.version == "v1":
            return int((self.acct_root / name / "cpuacct.usage").read_text()) / 1000
        for row in (self.cpu_root / name / "cpu.stat").read_text().splitlines():
            key, _, value = row.partition(" ")
            if key == "usage_usec":
                return float(value)
        return 0.0

    def throttled_pct(self, name: str) -> float:
        """Share of the group's periods in which it hit its cap, so far."""
        stat = dict(row.split() for row in (self.cpu_root / name / "cpu.stat").read_text().splitlines())
        periods = int(stat.get("nr_periods", 0))
        return 100 * int(stat.get("nr_throttled", 0)) / periods if periods else 0.0

    def cleanup(self) -> None:
        """Remove the groups (their processes must have exited)."""
        for name in reversed(self.made):
            for root in {self.cpu_root, self.acct_root}:
                with contextlib.suppress(FileNotFoundError):
                    (root / name).rmdir()
        self.made.clear()
