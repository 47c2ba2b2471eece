"""`memoir archive`: the archive of old events (runtime/archive), from the command line.

`status` and `verify` read the archive; `restore TYPE ID` puts an entity's archived events back
into the journal at their own seqs and positions; `run` makes one archiving pass (what `memoir
run --archive-url` does every interval), for a runtime started without it: one archiver at a time;
`export [--follow]` writes the journal as position-ordered files for analytics. The archive is
`--archive-url`, MEMOIR_ARCHIVE_URL, or what the data dir's `memoir run` recorded.
"""

from __future__ import annotations

import argparse

import msgspec

from ....archive import RUN_CHECKPOINT, Archive, Archiver, ArchiverSettings, ArchivingJournal, Exporter
from ....wire.protocol import check_entity_id
from ...process.logs import configure
from ..base import Subparsers, subcommand
from ..outcome import ANSWERED, Failure
from ..output import json_line, table
from ..reading import reading
from ..target import Target, client_target


def _target(args: argparse.Namespace, *, writes: bool = False) -> Target:
    configure("auto", "warning")  # stdout is for results: the archiver's warnings go to stderr
    target = client_target(args)
    if not target.settings.archive_url:
        raise Failure("usage", "no archive: give --archive-url (or MEMOIR_ARCHIVE_URL, or run with --archive-url)")
    Archive(target.settings.archive_url, create=writes)  # a bad URL is named before anything is opened
    return target


async def status(args: argparse.Namespace) -> int:
    async with reading(_target(args)) as journal:
        assert isinstance(journal, ArchivingJournal)
        found = msgspec.structs.asdict(await journal.archive.status())
        found["journal_run"] = await journal.load_checkpoint(RUN_CHECKPOINT)
    if args.json:
        print(json_line(found))
    else:
        print(table(["FIELD", "VALUE"], list(found.items())))
    return 0


async def verify(args: argparse.Namespace) -> int:
    async with reading(_target(args)) as journal:
        assert isinstance(journal, ArchivingJournal)
        checked, problems = await journal.archive.verify()
    if args.json:
        print(json_line({"checked": checked, "problems": problems}))
    elif problems:
        print(table(["SEGMENT", "PROBLEM"], [[p.path, p.error] for p in problems]))
    if problems:
        raise Failure("damaged", f"{len(problems)} of {checked} segments failed verification", status=ANSWERED)
    if not args.json:
        print(f"{checked} segments verified")
    return 0


async def restore(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    async with reading(_target(args)) as journal:
        assert isinstance(journal, ArchivingJournal)
        count = await journal.restore(args.type, args.id)
    print(json_line({"restored": count}) if args.json else f"restored {count} events of {args.type}/{args.id}")
    return 0


async def run_once(args: argparse.Namespace) -> int:
    async with reading(_target(args, writes=True)) as journal:
        assert isinstance(journal, ArchivingJournal)
        settings = ArchiverSettings(after=args.after if args.after is not None else ArchiverSettings().after)
        moved = await Archiver(journal.inner, journal.archive, settings, guards=args.guard or []).run_once()
    print(json_line(moved) if args.json else f"archived {moved.events} events of {moved.entities} entities")
    return 0


async def export(args: argparse.Namespace) -> int:
    async with reading(_target(args, writes=True)) as journal:
        assert isinstance(journal, ArchivingJournal)
        exporter = Exporter(journal, journal.archive)
        if args.follow:
            await exporter.follow(args.interval)
        count = await exporter.run_once()
    print(json_line({"exported": count}) if args.json else f"exported {count} events")
    return 0


def add(sub: Subparsers) -> None:
    a = subcommand(
        sub,
        "archive",
        "old events in object storage: status, verify, restore, run, export",
        "memoir archive status --archive-url s3://bucket/memoir",
        "memoir archive verify",
        "memoir archive restore inventory XYZ-1",
        "memoir archive run --after 604800",
        "memoir archive export --follow",
    )
    ops = a.add_subparsers(
        dest="archive_command",
        metavar="{status,verify,restore,run,export}",
        prog="memoir archive",
        required=True,
        help="what to do with the archive",
    )

    def op(name: str, help: str, example: str) -> argparse.ArgumentParser:
        p = subcommand(ops, name, help, example)
        p.add_argument("--archive-url", metavar="URL", help="the archive (default: the data dir's, MEMOIR_ARCHIVE_URL)")
        return p

    op("status", "what the archive holds", "memoir archive status").set_defaults(fn=status)
    op("verify", "read every segment and check it (sha256, count, seqs)", "memoir archive verify").set_defaults(
        fn=verify
    )
    r = op("restore", "put an entity's archived events back into the journal", "memoir archive restore inventory A")
    r.add_argument("type", metavar="TYPE", help="entity type")
    r.add_argument("id", metavar="ID", help="entity id")
    r.set_defaults(fn=restore)
    o = op("run", "one archiving pass now", "memoir archive run --after 86400")
    o.add_argument("--after", type=float, help="seconds an event stays in the journal at least (default 604800)")
    o.add_argument(
        "--guard",
        action="append",
        metavar="CHECKPOINT",
        help="a reader's checkpoint nothing above may move (memoir run guards with each publisher.TYPE)",
    )
    o.set_defaults(fn=run_once)
    e = op("export", "the journal as position-ordered files under export/", "memoir archive export --follow")
    e.add_argument("--follow", action="store_true", help="keep exporting as events arrive (until Ctrl-C)")
    e.add_argument("--interval", type=float, default=60.0, help="seconds between files when following (60)")
    e.set_defaults(fn=export)
