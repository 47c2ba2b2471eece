"""Tiered storage in `memoir run`: the journal wrapped so reads fall through, and the archiver beside it.

With `archive_url` set, the service's journal is an `ArchivingJournal` (views' catch-up, replays,
the admin's history reads see archived events) and the archiver runs as the cluster singleton
`archive` (one process moves events at a time), guarded by the outbox publisher's checkpoints
(one per type) so nothing moves before it reached the event streams. `archive_export` adds the
continuous export, the singleton `archive.export`, a round of files every `archive_interval`.
Both loops end when the run's task group is cancelled.
"""

from __future__ import annotations

import functools

from anyio.abc import TaskGroup

from ...archive import Archive, Archiver, ArchiverSettings, ArchivingJournal, Exporter
from ...journal import Journal
from ...streams.publisher import partition_name
from ..service._service import Service
from .settings import Settings


def archived(settings: Settings, journal: Journal) -> Journal:
    """The journal, wrapped when an archive is configured (a bad URL fails here, naming it)."""
    if not settings.archive_url:
        return journal
    return ArchivingJournal(journal, Archive(settings.archive_url))


def start_archiving(group: TaskGroup, svc: Service, settings: Settings) -> Archiver | None:
    """Start the archiver (and the export) in `group` if the service's journal is an archiving one."""
    journal = svc.journal
    if not isinstance(journal, ArchivingJournal):
        return None
    archiver = Archiver(
        journal.inner,
        journal.archive,
        ArchiverSettings(after=settings.archive_after, interval=settings.archive_interval),
        guards=[partition_name(t) for t in sorted(svc.runtime.models)] if svc.publish else [],
    )
    group.start_soon(svc.run_singleton, "archive", archiver.run)
    if settings.archive_export:
        exporter = Exporter(journal, journal.archive)
        follow = functools.partial(exporter.follow, settings.archive_interval)
        group.start_soon(svc.run_singleton, "archive.export", follow)
    return archiver
