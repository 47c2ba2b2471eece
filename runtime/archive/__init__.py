"""Tiered storage: old events move from the journal to object storage; reads fall through.

```python
archive = Archive("s3://bucket/memoir")           # or file:///dir, gs://…, az://…
journal = ArchivingJournal(open_journal(url), archive)
async with journal:
    await Archiver(journal.inner, archive, ArchiverSettings(after=7 * 86400)).run_once()
    await journal.read("inventory", "XYZ-1")     # the whole history, archived part included
```

Layer: above the journal (it wraps one), below the engine (which sees only a `Journal`).
The guide is docs/guides/archive.md.
"""

from __future__ import annotations

from .archive import Archive, Problem, Status
from .archiver import FAULT_ENV, Archiver, ArchiverSettings, PassResult
from .export import Exporter
from .journal import RUN_CHECKPOINT, ArchivingJournal

__all__ = [
    "FAULT_ENV",
    "RUN_CHECKPOINT",
    "Archive",
    "Archiver",
    "ArchiverSettings",
    "ArchivingJournal",
    "Exporter",
    "PassResult",
    "Problem",
    "Status",
]
