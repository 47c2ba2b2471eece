"""A full disk is not a crash: the one line that names it, found in whatever error carries it.

Starting on a full disk is one line naming it (exit 2), and a SIGTERM while full still exits 0
after flushing what could be flushed (run.py); this module only recognises the error.
"""

from __future__ import annotations

import errno

from ...model.errors import MemoirError, Unavailable

_JETSTREAM_NO_STORAGE = 10069  # JetStream's "insufficient storage resources"


def storage_full(exc: BaseException, where: str = "the data directory") -> str | None:
    """One line naming a full disk, if that is what `exc` (or an error in its group or chain) is."""
    if isinstance(exc, BaseExceptionGroup):
        return next((m for e in exc.exceptions if (m := storage_full(e, where)) is not None), None)
    if isinstance(exc, Unavailable) and exc.reason == "storage full":
        return exc.message
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"storage full: {exc.filename or where}: {exc.strerror}"
    if getattr(exc, "err_code", None) == _JETSTREAM_NO_STORAGE:
        return f"storage full: NATS JetStream has no storage left ({exc})"
    if isinstance(exc, MemoirError) and "no space left on device" in str(exc).lower():
        return "storage full: " + next(
            (line.strip() for line in str(exc).splitlines() if "no space left" in line.lower()), str(exc)
        )
    cause = exc.__cause__ or exc.__context__
    return None if cause is None else storage_full(cause, where)
