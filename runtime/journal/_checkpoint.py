"""SQLite's WAL checkpoint off the commit path: a thread of its own, with its own connection.

Why: with `wal_autocheckpoint` the connection that commits runs the checkpoint right after its
commit, so the journal's writer thread copied the WAL back into the database file itself, 30-40 ms
every ~16 MiB, while every command of the next batch waited. Here the writer runs with
`wal_autocheckpoint=0` and only looks at the WAL file's size after each commit (one `stat`):

- past `soft` bytes it wakes this thread, which runs a PASSIVE checkpoint on its own connection:
  PASSIVE never blocks a writer or a reader, so commits go on while it copies;
- past `hard` bytes (the checkpoint could not keep up: the writer never paused long enough for
  the WAL to be copied whole and restarted, or a reader held on to it) the writer runs a RESTART
  checkpoint itself, waiting for it as autocheckpoint did. Most of the WAL is copied by then, so
  this costs little; it is what keeps the WAL from growing without bound.

Nothing runs when the journal is idle: a quiet WAL stays as it is (up to `soft`), as it did with
autocheckpoint. An idle TRUNCATE was tried and left out: it frees the disk space a full disk's
next write would need to fail the way a full disk's writes are expected to (tests/faults), and
SQLite folds the WAL into the file anyway when the journal closes.

The file's size says how far the WAL went since it last restarted because the writer's connection
has `journal_size_limit = soft`: on a restart SQLite truncates the WAL file back to `soft`, so the
file is larger than `soft` only while what was written since has passed it.

A checkpoint is not a commit: it changes no row and no `data_version`, and SIGKILL in the middle of
one loses nothing (SQLite redoes it from the WAL on the next open). Durability is the commit's, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable

import anyio

from ..model.errors import ConfigError

SOFT = 16 * 1024 * 1024  # the WAL size from which the thread checkpoints (autocheckpoint's was ~16 MiB too)
HARD = 64 * 1024 * 1024  # the WAL size from which the writer checkpoints and waits


class Checkpointer:
    """Keeps a journal file's WAL bounded without checkpointing on the writer's thread (see the module docstring)."""

    def __init__(
        self,
        path: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        soft: int = SOFT,
        hard: int = HARD,
    ) -> None:
        if not 0 < soft < hard:
            raise ConfigError(f"the WAL checkpoint sizes must be 0 < soft < hard, got {soft} and {hard}")
        self.wal = f"{path}-wal"
        self.soft = soft
        self.hard = hard
        self._connect = connect
        self._wake = threading.Event()
        self._stopping = False
        self.passive = 0  # checkpoints by kind (for tests and benchmarks)
        self.blocking = 0

    def setup_writer(self, conn: sqlite3.Connection) -> None:
        """The writer's connection: no checkpoint of its own, and its WAL file cut back to `soft` on restart."""
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={self.soft}")

    def committed(self, conn: sqlite3.Connection) -> None:
        """Called by the writer after each commit, on its own connection."""
        try:
            size = os.stat(self.wal).st_size
        except OSError:
            return
        if size > self.hard:
            self.blocking += 1
            with contextlib.suppress(sqlite3.Error):  # the commit stands; the next one tries again
                conn.execute("PRAGMA wal_checkpoint(RESTART)")  # waits for readers, up to the busy timeout
        elif size > self.soft:
            self._wake.set()

    async def run(self) -> None:
        """The checkpoint thread, from `open` to `close`; cancelled, it stops after the checkpoint it is in.

        A thread of its own, not one of anyio's workers: it lives as long as the journal.
        """
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        thread = threading.Thread(target=self._work, args=(loop, stopped), name="memoir-sqlite-checkpoint")
        thread.start()
        try:
            await stopped.wait()
        finally:
            self.stop()
            with anyio.CancelScope(shield=True):
                await stopped.wait()
            thread.join()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _work(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
        try:
            self._loop()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(stopped.set)

    def _loop(self) -> None:
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError):
            return  # the writer checkpoints at `hard` on its own: the WAL stays bounded without this thread
        try:
            while not self._stopping:
                self._wake.wait()
                self._wake.clear()
                if not self._stopping:
                    self._passive(conn)
                    self.passive += 1
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @staticmethod
    def _passive(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):  # a full disk, say: the next commit past `soft` tries again
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
