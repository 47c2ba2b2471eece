"""SQLite's WAL checkpoint off the commit path: a thread of its own, with its own connection.

Why: with `wal_autocheckpoint` the connection that commits runs the checkpoint right after its
commit, so the journal's writer thread copied the WAL back into the database file itself, 30-40 ms
every ~16 MiB, while every command of the next batch waited. Here the writer runs with
`wal_autocheckpoint=0` and only wakes this thread after each commit, which looks at the WAL
file's size (a `stat` on the writer's thread would cost it a wait for the GIL after each commit
when the event loop is busy: a thread gives the GIL up for every system call):

- past `soft` bytes the thread runs a PASSIVE checkpoint on its own connection:
  PASSIVE never blocks a writer or a reader, so commits go on while it copies the bulk;
- once that checkpoint copied all it found, the writer's next commit copies the tail (the
  frames committed meanwhile, a batch or two) with a PASSIVE checkpoint of its own. Only a WAL
  copied whole when a write transaction begins is restarted, and a writer that never pauses
  leaves the thread no such moment (measured: without the tail the WAL grew past 4 MiB of a
  256 KiB limit). So a commit waits for a small checkpoint once per `soft` bytes, where it
  waited for the whole one before;
- past `hard` bytes (a reader held on to the WAL, or the thread could not copy it) the writer
  runs a RESTART checkpoint itself and waits for it, as autocheckpoint did: the WAL's bound. It
  waits for a checkpoint of the thread's in progress first: SQLite answers a checkpoint that
  meets another one `busy` at once, and each such miss let the WAL grow by another batch.
  The writer looks at the size itself, after a commit, once the thread saw it halfway from
  `soft` to `hard`, or when the thread has not looked since the commit before (it lags behind a
  loaded machine's writer): so the bound holds however late the thread runs, and a writer whose
  thread keeps up makes no system call of its own. (A CI run saw the WAL reach 2.9 times the
  bound when only the first rule held: the thread had last looked well below halfway.)

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
        self._copying = threading.Lock()  # held by the thread's checkpoint: the writer's RESTART waits for it
        self._stopping = False
        self._near = soft + (hard - soft) // 2
        self._tail_due = False  # the thread's last checkpoint copied all it found: the writer copies the tail
        self._near_hard = False  # the thread saw the WAL past `_near`: the writer checks the size itself
        self._commits = 0
        self._looked = 0  # the commits the thread's last look at the size came after
        self._tail_at = -2  # the commit after which the writer copied the tail: the next one restarts the WAL
        self.passive = 0  # checkpoints by kind (for tests and benchmarks): the thread's,
        self.tail = 0  # the writer's small ones after it,
        self.blocking = 0  # and the writer's past `hard`

    def setup_writer(self, conn: sqlite3.Connection) -> None:
        """The writer's connection: no checkpoint of its own, and its WAL file cut back to `soft` on restart."""
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={self.soft}")

    def committed(self, conn: sqlite3.Connection) -> None:
        """Called by the writer after each commit, on its own connection: usually only a wake-up."""
        self._commits += 1
        if self._tail_due:
            self._tail_due = False
            self.tail += 1
            if self._checkpoint(conn, "PASSIVE"):  # the next write transaction restarts the WAL
                self._tail_at = self._commits
        if (self._near_hard or self._looked < self._commits - 1) and self._size() > self.hard:
            self.blocking += 1
            # SQLite answers a checkpoint that meets another one busy at once, without its busy
            # handler: wait for the thread's to end first (else the WAL grew by a batch per miss)
            with self._copying:
                self._checkpoint(conn, "RESTART")  # waits for readers, up to the busy timeout
        self._wake.set()

    def _size(self) -> int:
        try:
            return os.stat(self.wal).st_size
        except OSError:
            return 0

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
            self._near_hard = True  # the writer checks at `hard` on its own: the WAL stays bounded without this thread
            return
        try:
            while not self._stopping:
                self._wake.wait()
                self._wake.clear()
                commits = self._commits
                size = self._size()
                self._near_hard = size > self._near
                self._looked = commits  # after `_near_hard`: the writer trusts it from this look on
                waiting = self._commits <= self._tail_at + 1  # for the restart the writer's tail allows
                if size > self.soft and not waiting and not self._tail_due and not self._stopping:
                    self.passive += 1
                    with self._copying:
                        self._tail_due = self._checkpoint(conn, "PASSIVE")
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, mode: str) -> bool:
        """Whether it copied every frame it found; an error (a full disk, say) is left for the next one."""
        try:
            busy, log, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except (sqlite3.Error, TypeError, ValueError):
            return False
        return bool(busy == 0 and log > 0 and log == copied)
