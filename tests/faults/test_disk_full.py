"""A full disk under the SQLite journal and view store: a clear `storage full` error per write,
the journal stays up, and writes succeed again by themselves once space returns.

The test mounts a small file system of its own (tmpfs, or a loop-mounted ext4 file); where it
cannot (not root, no mount), it is skipped with the reason, except under CI=true where it fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog
from support.ci import in_ci
from support.waiting import eventually

from runtime import Envelope
from runtime.journal.sqlite import SqliteJournal
from runtime.model.errors import Unavailable
from runtime.streams.view_store import RawRows, SqliteViewStore

pytestmark = pytest.mark.anyio

SIZE_MB = 20
BALLAST = 10 * 1024 * 1024  # freed later: enough for the WAL the full disk left to be checkpointed


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def small_filesystem(base: Path) -> Iterator[Path]:
    """A SIZE_MB file system mounted at base/fs for the test's duration."""
    mnt = base / "fs"
    mnt.mkdir()
    tried = []
    done = _run("mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mnt))
    if done.returncode != 0:
        tried.append(f"tmpfs: {done.stderr.strip() or done.returncode}")
        image = base / "fs.img"
        with image.open("wb") as f:
            f.truncate(SIZE_MB * 1024 * 1024)
        mk = _run("mkfs.ext4", "-q", "-F", str(image))
        done = _run("mount", "-o", "loop", str(image), str(mnt)) if mk.returncode == 0 else mk
        if done.returncode != 0:
            tried.append(f"loop ext4: {done.stderr.strip() or done.returncode}")
            why = "cannot mount a small file system: " + "; ".join(tried)
            if in_ci():
                pytest.fail(f"{why} (CI=true: the disk-full test must run)")
            pytest.skip(why)
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))


def fill(path: Path) -> int:
    """Write a filler file until the file system is full; returns its size."""
    chunk = b"\0" * (256 * 1024)
    written = 0
    with path.open("wb", buffering=0) as f:
        for _ in range(4 * SIZE_MB + 8):  # bounded: 256 KiB at a time, more than the whole fs
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):  # the last few bytes
            for _ in range(256):
                written += f.write(b"\0" * 1024)
    return written


def event(entity_id: str, seq: int, size: int = 16384) -> Envelope:
    return Envelope(
        entity_type="acct",
        entity_id=entity_id,
        seq=seq,
        name="Deposited",
        version=1,
        payload=b"x" * size,
        recorded_at=time.time_ns(),
        command_id=f"{entity_id}-{seq}",
        reply=b"null",
    )


async def test_sqlite_journal_on_a_full_disk_says_so_and_recovers(tmp_path: Path) -> None:
    with small_filesystem(tmp_path) as fs:
        db = fs / "journal.db"
        acked: list[Envelope] = []
        full_errors: list[Unavailable] = []
        async with SqliteJournal(db) as journal:
            heads = dict.fromkeys([f"e{i}" for i in range(8)], 0)

            async def write_round() -> int:
                """One append per entity; returns how many were refused for space."""
                refused = 0
                for entity in heads:
                    try:
                        stored = await journal.append([event(entity, heads[entity] + 1)], heads[entity])
                    except Unavailable as exc:
                        full_errors.append(exc)
                        refused += 1
                        continue
                    heads[entity] = stored[0].seq
                    acked.extend(stored)
                return refused

            ballast = fs / "ballast"  # what an operator frees later
            ballast.write_bytes(b"\0" * BALLAST)
            refused = 0
            for _ in range(2000):  # until the WAL fills the disk (it checkpoints at ~16 MB)
                refused += await write_round()
                if refused >= 16:
                    break
            assert refused >= 16, "the full disk never refused a write"
            wal = Path(f"{db}-wal")
            wal_full = wal.stat().st_size
            for exc in full_errors:
                assert exc.reason == "storage full" and "journal.db" in str(exc), exc
            assert "rollback" not in str(full_errors[-1])
            assert len(await journal.read_all(1, limit=100_000)) == len(acked)  # still serving reads

            ballast.unlink()

            async def serves() -> bool:
                return await write_round() == 0

            await eventually(serves, 10, "the journal serving again by itself: no restart")
            for _ in range(5):
                assert await write_round() == 0
            wal_after = wal.stat().st_size if wal.exists() else 0
            print(
                f"\nsqlite disk full: acknowledged={len(acked)} refused={len(full_errors)}"
                f" wal_when_full={wal_full} wal_after_recovery={wal_after}"
            )
            assert wal_after < wal_full // 4  # checkpointed when writes resumed

        async with SqliteJournal(db) as journal:  # and across a restart
            stored = await journal.read_all(1, limit=100_000)
            assert [(e.entity_id, e.seq, e.position) for e in stored] == [
                (e.entity_id, e.seq, e.position) for e in acked
            ]
            for entity, head in heads.items():
                assert await journal.head("acct", entity) == head
            await journal.append([event("e0", heads["e0"] + 1)], heads["e0"])


async def test_sqlite_view_store_waits_out_a_full_disk(tmp_path: Path) -> None:
    with small_filesystem(tmp_path) as fs:
        async with SqliteViewStore(fs / "views.db") as store:
            big = b"v" * 65536

            def put(n: int):  # type: ignore[no-untyped-def]
                def work(raw: RawRows) -> tuple[dict[str, bytes | None], dict[str, int]]:
                    return {f"k{n}-{i}": big for i in range(4)}, {"s": n}

                return work

            await store.transact("v", put(1))
            filler = fs / "filler"
            fill(filler)
            done = anyio.Event()
            n = stored = 1

            async def writer() -> None:
                nonlocal n, stored
                for _ in range(200):  # bounded: more than the free space takes
                    n += 1
                    await store.transact("v", put(n))  # blocks while full
                    stored = n
                    if done.is_set():
                        return

            with structlog.testing.capture_logs() as logs:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer)

                    def waiting() -> bool:
                        return any(e["event"] == "storage unavailable" for e in logs)

                    await eventually(waiting, 10, "the view store to find the disk full")
                    blocked_at = n
                    await anyio.sleep(0.5)  # on purpose: a while full, during which nothing is written
                    assert n == blocked_at and stored == n - 1, "the view store kept writing on a full disk"
                    os.unlink(filler)
                    done.set()
                    await eventually(lambda: stored >= blocked_at, 10, "the blocked write stored once there is room")
            assert (await store.checkpoints("v"))["s"] >= blocked_at
            assert await store.get("v", f"k{blocked_at}-3") == big


# -- `memoir run` on a full disk ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
MEMOIR = [sys.executable, "-m", "runtime.serve.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
OPEN = '{"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}'


def test_memoir_run_on_a_full_disk_is_one_line(tmp_path: Path) -> None:
    with small_filesystem(tmp_path) as fs:
        fill(fs / "filler")
        done = subprocess.run(
            [*MEMOIR, "run", "--data-dir", str(fs / "data")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            check=False,
        )
        print(f"\nstart-up on a full disk: exit={done.returncode} stderr={done.stderr!r}")
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("memoir: storage_full: "), done.stderr


def test_sigterm_while_the_disk_is_full_exits_0(tmp_path: Path) -> None:
    with small_filesystem(tmp_path) as fs:
        data = fs / "data"
        log = (tmp_path / "memoir.log").open("w")
        proc = subprocess.Popen(
            [*MEMOIR, "run", "--data-dir", str(data), "--log-format", "json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=ENV,
        )
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            assert banner.startswith("memoir: serving"), banner

            def send(command: str, args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [*MEMOIR, "send", "inventory", "XYZ-1", command, args, "--data-dir", str(data)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=ENV,
                    check=False,
                )

            assert send("open", OPEN).returncode == 0
            fill(fs / "filler")
            full = [send("receive", '{"units": 1, "on": "2022-03-01"}') for _ in range(3)]
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            log.close()
        stderr = (tmp_path / "memoir.log").read_text()
        print(
            f"\nSIGTERM while full: exit={code} after {took:.1f}s;"
            f" answers while full: {[(r.returncode, r.stderr.strip()[:160]) for r in full]}"
        )
        assert code == 0, stderr[-2000:]
        assert "Traceback" not in stderr
        assert all(r.returncode != 0 and "storage full" in r.stderr for r in full), full
