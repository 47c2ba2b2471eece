"""A data directory remembers the runtime that uses it, and belongs to one process at a time.

`memoir run` holds an exclusive `flock` on `{data_dir}/lock` for its whole life and records
what it runs in `{data_dir}/memoir.json` (the manifest: app, journal, view store, prefix,
NATS URL). So a second `memoir run` or a `memoir demo` on the same directory is refused
with the holder's pid instead of starting a second nats-server on the same store, and
`memoir state` / `events` / `export` read the journal and fold with the app that runtime
actually used. The kernel drops a flock when its holder dies, even by SIGKILL, so a crash
never leaves a stale lock behind.

The manifest may hold a journal URL with a password: it is created owner-only (0600) and
replaced atomically (write a temporary file, fsync, rename), so a reader never sees half.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ...model.errors import ConfigError, MemoirError

MANIFEST = "memoir.json"
LOCK = "lock"


class Manifest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the last `memoir run` on a data directory used."""

    app: str
    app_path: str | None = None  # the directory `memoir run` was started in: where the app's module is found
    journal_url: str
    view_store_url: str
    prefix: str
    nats_url: str | None = None
    embedded_nats: bool = False  # the NATS server lived and died with that runtime
    pid: int | None = None
    archive_url: str | None = None  # where old events went (runtime/archive): the CLI's reads fall through to it
    # The URLs whose password or token was left out (never at rest here): a client command on this
    # data dir gives it again as `memoir run` got it — MEMOIR_NATS_URL, the --nats-* credential
    # flags, MEMOIR_JOURNAL_URL, or PostgreSQL's own PGPASSWORD / ~/.pgpass.
    secrets_left_out: list[str] = msgspec.field(default_factory=list)


class DataDirLocked(MemoirError):
    """Another process holds the data directory."""

    def __init__(self, data_dir: Path, pid: int | None, advice: str) -> None:
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"data dir {data_dir} is in use by {who} (a `memoir run` or `memoir demo`); {advice}")
        self.data_dir = data_dir
        self.pid = pid


def read_manifest(data_dir: Path) -> Manifest | None:
    """The manifest of a data dir, or None if no runtime ever ran there."""
    try:
        raw = (data_dir / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {data_dir / MANIFEST}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{data_dir / MANIFEST} is not a memoir manifest: {exc}") from None


def write_manifest(data_dir: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically; the file is readable by its owner only."""
    path = data_dir / MANIFEST
    tmp = data_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file
        os.write(fd, msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _holder_pid(fd: int) -> int | None:
    with contextlib.suppress(ValueError, OSError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


@contextlib.contextmanager
def lock_data_dir(data_dir: Path, advice: str) -> Iterator[None]:
    """Own `data_dir` until the block ends; DataDirLocked (naming the holder's pid, then `advice`) if another does."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirLocked(data_dir, _holder_pid(fd), advice) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the flock goes with the close below
    finally:
        os.close(fd)


def holder(data_dir: Path) -> int | None:
    """The pid holding `data_dir` now, or None if nobody does (0 if the holder's pid is unreadable)."""
    try:
        fd = os.open(data_dir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            return 0 if pid is None else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
