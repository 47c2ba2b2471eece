"""`memoir run --archive-url`: the archiver moves old events while the runtime serves, and the CLI's reads
on the same data dir fall through to the archive (the data dir's manifest says where it is)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from support.process import RunningRuntime
from support.waiting import eventually

from runtime import SqliteJournal

pytestmark = pytest.mark.anyio


async def test_memoir_run_archives_and_reads_fall_through(tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = f"file://{tmp_path / 'archive'}"
    flags = ["--archive-url", url, "--archive-after", "0", "--archive-interval", "0.2", "--archive-export"]
    rt = RunningRuntime(data, *flags).start()
    try:
        nc = await rt.connect()
        try:
            await nc.request("memoir.cmd.inventory.XYZ-1.open", b'{"units": 0}', 10)
            for _ in range(149):
                reply = await nc.request("memoir.cmd.inventory.XYZ-1.receive", b'{"units": 2, "on": "2022-03-01"}', 10)
                assert json.loads(reply.data)["ok"]
        finally:
            await nc.close()

        async def moved() -> bool:
            async with SqliteJournal(data / "journal.db") as journal:
                held = await journal.read("inventory", "XYZ-1", limit=1)
                return bool(held) and held[0].seq == 101

        await eventually(moved, timeout=60, what="the archiver moving seqs 1..100 (the snapshot's)")
        events = rt.cli("events", "inventory", "XYZ-1", "--json")
        assert events.returncode == 0, events.stderr
        assert [json.loads(line)["seq"] for line in events.stdout.splitlines()] == list(range(1, 151))
        state = rt.cli("state", "inventory", "XYZ-1", "--seq", "60", "--json")
        assert state.returncode == 0, state.stderr
        assert json.loads(state.stdout)["state"]["units"] == 2 * 59
        status = rt.cli("archive", "status", "--json")
        assert json.loads(status.stdout)["events"] == 100

        def exported() -> list[int]:
            files = sorted((tmp_path / "archive" / "export").rglob("*.jsonl.gz"))
            return [json.loads(x)["seq"] for f in files for x in gzip.decompress(f.read_bytes()).splitlines()]

        await eventually(lambda: len(exported()) == 150, what="the continuous export of all 150 events")
        assert exported() == list(range(1, 151))
    finally:
        assert rt.stop() == 0
