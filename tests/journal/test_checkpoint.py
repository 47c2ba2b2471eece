"""SQLite's WAL checkpoint runs off the commit path (runtime/journal/_checkpoint.py) and still keeps the
WAL bounded: under a long write and while a reader holds on to the WAL;
readers see every commit; a SIGKILL of a writer process between checkpoints loses nothing acknowledged."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from support.journals import ev
from support.waiting import eventually

from runtime import ConfigError, SqliteJournal
from runtime.journal._checkpoint import Checkpointer

pytestmark = pytest.mark.anyio

KIB = 1024
SOFT, HARD = 64 * KIB, 256 * KIB
PAYLOAD = b'"' + b"x" * 2000 + b'"'
# What one commit can add past the limit before the writer checks: a batch of this test's appends
# (a few dozen 2 kB events and the index pages they touch)
ONE_BATCH = 192 * KIB
TESTS = Path(__file__).resolve().parents[1]


def wal_size(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


async def test_the_wal_stays_bounded_under_a_long_write_and_readers_see_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    entities, events = 20, 60  # 1,200 appends of 2 kB: ~20 times the soft size
    sizes: list[int] = []
    async with SqliteJournal(path, wal_checkpoint_at=SOFT, wal_limit=HARD) as journal:

        async def writer(k: int) -> None:
            for seq in range(events):
                await journal.append([ev(f"e{k}", seq + 1, PAYLOAD)], seq)
                sizes.append(wal_size(path))

        async with anyio.create_task_group() as tg:
            for k in range(entities):
                tg.start_soon(writer, k)
        checkpointer = journal._checkpointer
        assert checkpointer.passive > 0, "the checkpoint thread ran"
        assert max(sizes) <= HARD + ONE_BATCH, f"the WAL grew to {max(sizes)} bytes"
        everything = await journal.read_all(1, limit=entities * events + 1)
        assert [e.position for e in everything] == list(range(1, entities * events + 1))
        for k in range(entities):
            assert [e.seq for e in await journal.read("thing", f"e{k}")] == list(range(1, events + 1))
        await journal.append([ev("after", 1)], 0)
    async with SqliteJournal(path) as reopened:  # another connection sees what was checkpointed
        assert len(await reopened.read_all(1, limit=entities * events + 2)) == entities * events + 1


async def test_a_reader_holding_the_wal_makes_the_writer_wait_instead_of_the_wal_growing(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    total = 400  # appends of 2 kB: ~3 times the hard limit
    sizes: list[int] = []
    async with SqliteJournal(path, wal_checkpoint_at=SOFT, wal_limit=HARD) as journal:
        await journal.append([ev("r", 1)], 0)
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)  # holds this snapshot
        held = True

        async def writer() -> None:
            for seq in range(total):
                await journal.append([ev("w", seq + 1, PAYLOAD)], seq)
                sizes.append(wal_size(path))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                # the checkpoint thread cannot copy past the reader's snapshot: the WAL reaches the
                # hard limit and the writer checkpoints itself, waiting for the reader
                await eventually(lambda: journal._checkpointer.blocking > 0, what="the writer's own checkpoint")
                assert len(sizes) < total, "the writer waits for the reader"
                assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
                reader.execute("COMMIT")
                held = False
        finally:
            if held:
                reader.execute("COMMIT")
            reader.close()
        assert len(sizes) == total
        assert max(sizes) <= HARD + ONE_BATCH, f"the WAL grew to {max(sizes)} bytes"
        assert [e.seq for e in await journal.read("thing", "w")] == list(range(1, total + 1))


async def test_a_sigkill_between_checkpoints_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    acked: dict[str, int] = {}
    checkpoints = 0
    env = {**os.environ, "PYTHONPATH": f"{TESTS.parent}:{TESTS}"}
    cmd = [sys.executable, "-m", "journal.sqlite_writer", str(path), "16", "10000"]
    async with await anyio.open_process(cmd, cwd=TESTS, env=env) as proc:
        assert proc.stdout is not None
        buffer = b""
        with anyio.fail_after(120):
            # until well past several of the thread's checkpoints, then kill it mid-write
            while checkpoints < 5 or sum(acked.values()) < 1500:
                buffer += await proc.stdout.receive()
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    entity, acked_seq, passive = line.decode().split()
                    acked[entity] = max(acked.get(entity, 0), int(acked_seq))
                    checkpoints = int(passive)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    async with SqliteJournal(path) as journal:
        for entity, seq in acked.items():
            stored = [e.seq for e in await journal.read("crash", entity)]
            assert stored[:seq] == list(range(1, seq + 1)), f"{entity}: acknowledged up to {seq}, stored {stored}"
        everything = await journal.read_all(1, limit=100_000)
        assert [e.position for e in everything] == list(range(1, len(everything) + 1))
        assert len(everything) >= sum(acked.values())


def test_the_sizes_must_leave_room_between_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SqliteJournal(tmp_path / "j.db", wal_checkpoint_at=HARD, wal_limit=SOFT)


def test_the_wal_stays_bounded_when_the_checkpoint_thread_never_runs(tmp_path: Path) -> None:
    """The thread may lag a loaded machine's writer by many commits (a CI run: the WAL at 2.9 times
    the bound, the thread's last look well below halfway). Here it never runs at all: the writer,
    seeing no look since its commit before, checks the size itself."""
    path = tmp_path / "w.db"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    checkpointer = Checkpointer(str(path), connect, soft=SOFT, hard=HARD)
    writer = connect()
    writer.execute("PRAGMA journal_mode=WAL")
    checkpointer.setup_writer(writer)
    writer.execute("CREATE TABLE t (v BLOB)")
    sizes = []
    for _ in range(400):  # 400 commits of 2 kB: three times the bound
        writer.execute("INSERT INTO t VALUES (?)", (PAYLOAD,))
        checkpointer.committed(writer)
        sizes.append(wal_size(path))
    writer.close()
    assert checkpointer.blocking > 0, "the writer checkpointed itself"
    assert max(sizes) <= HARD + ONE_BATCH, f"the WAL grew to {max(sizes)} bytes"
