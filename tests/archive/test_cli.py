"""`memoir archive` and the CLI's reads as a user runs them, on a SQLite journal and a local archive;
and the crash between archiving and truncation, with the real process killed at that point."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.process import MEMOIR, ROOT

from entities import app
from runtime import Runtime, SqliteJournal
from runtime.archive import FAULT_ENV, RUN_CHECKPOINT

pytestmark = pytest.mark.anyio


def memoir(data: Path, *args: str, archive: str | None = None, fault: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MEMOIR_ARCHIVE_URL", None)
    if archive is not None:
        env["MEMOIR_ARCHIVE_URL"] = archive
    if fault:
        env[FAULT_ENV] = "before-truncate"
    return subprocess.run(
        [*MEMOIR, *args, "--data-dir", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


async def held(data: Path) -> list[int]:
    async with SqliteJournal(data / "journal.db") as journal:
        return [e.seq for e in await journal.read("inventory", "XYZ-1")]


async def test_archive_commands_and_a_crash_before_truncation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    async with SqliteJournal(data / "journal.db") as journal, Runtime(app, journal) as rt:
        await rt.ask("inventory", "XYZ-1", "open", {"units": 0})
        for day in range(149):  # a snapshot at 100 (snapshot_every)
            await rt.ask("inventory", "XYZ-1", "receive", {"units": 1 + day % 3, "on": "2022-03-01"})
    url = f"file://{tmp_path / 'archive'}"
    events = ok(memoir(data, "events", "inventory", "XYZ-1", "--json"))
    state = ok(memoir(data, "state", "inventory", "XYZ-1", "--seq", "50", "--json"))
    assert len(events.splitlines()) == 150

    killed = memoir(data, "archive", "run", "--after", "0", archive=url, fault=True)
    assert killed.returncode == -9, killed.stderr  # SIGKILL between the archive's files and the truncation
    assert await held(data) == list(range(1, 151))  # nothing dropped
    assert ok(memoir(data, "events", "inventory", "XYZ-1", "--json", archive=url)) == events
    status = json.loads(ok(memoir(data, "archive", "status", "--json", archive=url)))
    assert (status["events"], status["segments"]) == (100, 1)

    assert ok(memoir(data, "archive", "run", "--after", "0", archive=url)) == "archived 100 events of 1 entities\n"
    assert await held(data) == list(range(101, 151))
    assert ok(memoir(data, "events", "inventory", "XYZ-1", "--json", archive=url)) == events  # memoir events
    assert ok(memoir(data, "state", "inventory", "XYZ-1", "--seq", "50", "--json", archive=url)) == state  # time travel
    without = ok(memoir(data, "events", "inventory", "XYZ-1", "--json"))
    assert len(without.splitlines()) == 50  # no archive: the journal's own
    async with SqliteJournal(data / "journal.db") as journal:
        assert await journal.load_checkpoint(RUN_CHECKPOINT) == 1
    assert ok(memoir(data, "archive", "verify", archive=url)) == "1 segments verified\n"

    assert ok(memoir(data, "archive", "restore", "inventory", "XYZ-1", archive=url)) == (
        "restored 100 events of inventory/XYZ-1\n"
    )
    assert await held(data) == list(range(1, 151))
    assert ok(memoir(data, "events", "inventory", "XYZ-1", "--json")) == events

    assert ok(memoir(data, "archive", "export", archive=url)) == "exported 150 events\n"  # the Firehose
    assert ok(memoir(data, "archive", "export", archive=url)) == "exported 0 events\n"  # from its checkpoint
    exported = [
        json.loads(x)
        for f in sorted((tmp_path / "archive" / "export").rglob("*.gz"))
        for x in gzip.decompress(f.read_bytes()).splitlines()
    ]
    assert [x["seq"] for x in exported] == list(range(1, 151))

    segment = next((tmp_path / "archive" / "segments").rglob("*.jsonl.gz"))
    segment.write_bytes(gzip.compress(gzip.decompress(segment.read_bytes()).replace(b'"units":1,', b'"units":9,')))
    bad = memoir(data, "archive", "verify", archive=url)
    assert bad.returncode == 1
    assert "memoir: damaged: 1 of 1 segments failed verification" in bad.stderr
    assert segment.name in bad.stdout


def test_a_bad_archive_url_is_named(tmp_path: Path) -> None:
    result = memoir(tmp_path, "archive", "status", "--archive-url", "ftp://files.example/x")
    assert result.returncode == 2
    assert "archive URL 'ftp://files.example/x'" in result.stderr
    result = memoir(tmp_path, "archive", "status")
    assert result.returncode == 2
    assert "no archive: give --archive-url" in result.stderr
    result = memoir(tmp_path, "archive", "verify", "--archive-url", f"file://{tmp_path / 'typo'}")
    assert result.returncode == 2
    assert f"archive URL 'file://{tmp_path / 'typo'}': no directory" in result.stderr
    assert not (tmp_path / "typo").exists()  # a command that reads makes no directory
