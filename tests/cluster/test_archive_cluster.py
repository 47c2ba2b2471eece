"""The archiver in a cluster: three `memoir run --cluster` members on a shared PostgreSQL journal with
MEMOIR_ARCHIVE_URL set run it as one singleton (`archive`), which moves an entity's events up to its
snapshot; every member's history reads fall through to the shared archive."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.deployment import KINDS, deployed
from support.waiting import eventually

from runtime import open_journal
from runtime.archive import Archive, ArchivingJournal

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio


async def test_one_archiver_moves_events_for_the_cluster(
    nats_cluster: NatsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"file://{tmp_path / 'archive'}"
    for name, value in {"URL": url, "AFTER": "0", "INTERVAL": "0.5"}.items():
        monkeypatch.setenv(f"MEMOIR_ARCHIVE_{name}", value)  # the members' environment
    async with deployed(KINDS[1], nats_cluster.urls, tmp_path) as d:
        assert d.journal_url is not None
        for _ in range(150):  # a snapshot at 100
            await d.send("inventory", "arch-1", "receive", {"units": 2, "on": "2022-03-01"})

        async def moved() -> bool:
            async with open_journal(d.journal_url or "") as journal:
                held = await journal.read("inventory", "arch-1", limit=1)
                return bool(held) and held[0].seq == 101

        await eventually(moved, 90, "the archive singleton moving seqs 1..100")
        assert "archive" in (await d.ownership()).singletons  # held by one member
        manifest = await Archive(url).manifest("inventory", "arch-1")
        seqs = [seq for s in manifest.segments for seq in range(s.from_seq, s.to_seq + 1)]
        assert seqs == list(range(1, 101))  # in one segment or several (a pass moves what was published)
        async with ArchivingJournal(open_journal(d.journal_url), Archive(url)) as journal:
            assert [e.seq for e in await journal.read("inventory", "arch-1")] == list(range(1, 151))
        assert await d.send("inventory", "arch-1", "receive", {"units": 2, "on": "2022-03-01"}) == 302
