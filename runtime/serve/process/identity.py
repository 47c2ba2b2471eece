"""The data directory is its owner's alone, and so is the embedded NATS server.

- `memoir run` sets the process umask to 0o077 (`owner_only_umask`), so every file it and its
  children create — the SQLite journal and its -wal/-shm files, the view store, the NATS store,
  logs — is 0600 and every directory 0700, including files SQLite creates later on its own. An
  explicit chmod at each creation would miss those.
- `private_dir` makes (or tightens) the data directory to 0700, so even files an older version
  left 0644 are out of other users' reach.
- The embedded nats-server admits one user nkey, generated per data directory on first run
  (`embedded_identity`): the seed in `nats.nk` (0600), only the public key in the server's config.
  `memoir send` and the other commands run by the same user read the seed from there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec
import structlog

from ...model.errors import ConfigError
from ...wire.auth import NatsAuth

log = structlog.get_logger("memoir.private")

OWNER_ONLY = 0o077
SEED_FILE = "nats.nk"


def owner_only_umask() -> int:
    """Make every file this process (and its children) creates from now on owner-only; the old umask."""
    return os.umask(OWNER_ONLY)


def private_dir(path: Path) -> Path:
    """Create `path` (0700), or tighten it to 0700 if it exists and is ours."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & OWNER_ONLY:
        try:
            path.chmod(0o700)
        except PermissionError:
            log.warning("data directory is readable by others and not ours to tighten", path=str(path), mode=oct(mode))
        else:
            log.info("data directory tightened to owner-only", path=str(path), was=oct(mode))
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as an owner-only file (0600), atomically: readers see the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Identity(msgspec.Struct, frozen=True):
    """The embedded server's one user: its public nkey (in the server config) and its seed file."""

    public_key: str
    seed_file: Path

    def auth(self) -> NatsAuth:
        return NatsAuth(nkey_file=str(self.seed_file))


def embedded_identity(data_dir: Path) -> Identity:
    """The data directory's nkey, generated (0600) on first use; the same on every later run."""
    import nkeys  # type: ignore[import-untyped]  # nats-py's optional dependency, in memoir's

    seed_file = data_dir / SEED_FILE
    if not seed_file.exists():
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        write_private(seed_file, seed.decode() + "\n")
    if seed_file.stat().st_mode & OWNER_ONLY:
        seed_file.chmod(0o600)
    try:
        kp = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
    except Exception:  # noqa: BLE001 - nkeys raises its own types and binascii/nacl errors
        raise ConfigError(f"{seed_file} holds no valid nkey seed: remove it and restart `memoir run`") from None
    try:
        return Identity(kp.public_key.decode(), seed_file)
    finally:
        kp.wipe()


def local_auth(data_dir: Path) -> NatsAuth:
    """How a command of the same user reaches the embedded server a `memoir run` started in `data_dir`."""
    seed_file = data_dir / SEED_FILE
    if not seed_file.exists():
        return NatsAuth()  # an older data directory, or a server started by hand: try without
    if not os.access(seed_file, os.R_OK):
        raise ConfigError(f"cannot read {seed_file}: the embedded NATS server's key belongs to its owner only")
    return NatsAuth(nkey_file=str(seed_file))
