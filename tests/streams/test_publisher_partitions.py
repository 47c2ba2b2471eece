"""The outbox publisher partitioned by stream: one partition per entity type, each with its own
checkpoint, and the upgrade from the single whole-journal checkpoint."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from support.reading import journal_events, stream_messages

from entities import InventoryItem, Profile
from runtime import App, Envelope, Runtime, SqliteJournal
from runtime.journal.base import Page
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.publisher import CHECKPOINT, CHECKPOINT_SYNCED, Publisher, partition_name
from runtime.wire.protocol import stream_name

pytestmark = pytest.mark.anyio

app = App("parts", entities=[InventoryItem, Profile])
TYPES = ("inventory", "profile")


async def _append(rt: Runtime, first: int, count: int) -> None:
    for k in range(first, first + count):
        await rt.ask("inventory", f"i{k % 3}", "receive", {"units": 1, "on": "2022-03-01"})
        await rt.ask("profile", f"p{k}", "register", {"name": f"n{k}"})


async def _ids(nc: NATS, entity_type: str) -> list[str]:
    """The message ids in the type's stream (none if the stream was never made)."""
    try:
        msgs = await stream_messages(nc.jetstream(), stream_name("memoir", entity_type))
    except NotFoundError:
        return []
    return [m.headers["Nats-Msg-Id"] for m in msgs]


async def _run_until_flushed(publisher: Publisher) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.run)
        await publisher.flush(20)
        tg.cancel_scope.cancel()


async def test_each_partition_publishes_its_type_alone_from_its_own_checkpoint(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        async with Service(app, journal, nats_url=nats_server.url) as svc:
            await _append(svc.runtime, 0, 20)
            assert svc.publisher is not None
            await svc.publisher.flush(20)
            assert sorted(svc.publisher.partitions) == list(TYPES)
            assert svc.publisher.checkpoint == await journal.last_position()
            assert await svc.publisher.lag() == 0
            for t, part in svc.publisher.partitions.items():
                assert part.only == t and part.published == 20, "each partition published its type's 20 events"
        last = await journal.last_position()
        for t in TYPES:
            assert await journal.load_checkpoint(partition_name(t)) == last
        assert await journal.load_checkpoint(CHECKPOINT) == 0, "the whole-journal checkpoint is no longer written"
        stored = await journal_events(journal)
    nc = await nats.connect(nats_server.url)
    try:
        for t in TYPES:
            assert sorted(await _ids(nc, t)) == sorted(e.key for e in stored if e.entity_type == t)
    finally:
        await nc.close()


async def _pretend_published_up_to(journal: SqliteJournal, position: int) -> None:
    """The single publisher of before, long running: its checkpoint and its synced one (older than a
    stream sync interval) both at `position`. The streams stay empty, so whatever a partition sends
    shows where it started."""
    await journal.save_checkpoint(CHECKPOINT, position)
    await journal.save_checkpoint(CHECKPOINT_SYNCED, position)


async def test_an_upgrade_starts_each_partition_at_the_whole_journal_checkpoint(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    """Nothing at or below the old single checkpoint is published again, and nothing after it is skipped."""
    nc = await nats.connect(nats_server.url)
    try:
        async with SqliteJournal(tmp_path / "j.db") as journal:
            async with Runtime(app, journal) as rt:
                await _append(rt, 0, 10)
                upgraded_at = await journal.last_position()
                await _pretend_published_up_to(journal, upgraded_at)
                await _append(rt, 10, 5)
            for t in TYPES:
                assert await journal.load_checkpoint(partition_name(t)) == 0, "no partition checkpoint yet"
                await _run_until_flushed(Publisher(journal, nc, only=t))
                assert await journal.load_checkpoint(partition_name(t)) == await journal.last_position()
            stored = await journal_events(journal)
        for t in TYPES:
            after = sorted(e.key for e in stored if e.entity_type == t and e.position > upgraded_at)
            assert len(after) == 5
            assert sorted(await _ids(nc, t)) == after, f"{t}: exactly the events after the old checkpoint"
    finally:
        await nc.close()


async def test_a_partition_checkpoint_behind_the_whole_journal_one_starts_at_the_later(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    """A mixed-version cluster: the old single publisher moved on after a partition last saved."""
    nc = await nats.connect(nats_server.url)
    try:
        async with SqliteJournal(tmp_path / "j.db") as journal:
            async with Runtime(app, journal) as rt:
                await _append(rt, 0, 6)
            await journal.save_checkpoint(partition_name("inventory"), 2)
            await journal.save_checkpoint(f"{partition_name('inventory')}.synced", 2)
            await _pretend_published_up_to(journal, await journal.last_position())
            partition = Publisher(journal, nc, only="inventory")
            await _run_until_flushed(partition)
            assert partition.published == 0, "nothing at or below the whole-journal checkpoint again"
            assert partition.checkpoint == await journal.last_position()
            assert await _ids(nc, "inventory") == []
    finally:
        await nc.close()


class _Reads(SqliteJournal):
    """A journal that remembers every event its reads of the whole journal returned."""

    seen: list[str]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        page = await super().read_all(from_position, limit)
        self.seen.extend(e.entity_type for e in page)
        return page

    async def read_types(self, types: Collection[str], from_position: int = 1, limit: int = 1000) -> Page:
        page = await super().read_types(types, from_position, limit)
        self.seen.extend(e.entity_type for e in page.events)
        return page


async def test_a_partition_reads_its_type_alone_and_its_checkpoint_passes_the_others(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    """N partitions read the journal once between them: each reads its type's events only (here from the
    store: another instance wrote them), and its checkpoint still goes past the other types' events."""
    nc = await nats.connect(nats_server.url)
    try:
        async with SqliteJournal(tmp_path / "j.db") as writer, Runtime(app, writer) as rt:
            await _append(rt, 0, 12)
            await rt.ask("inventory", "late", "receive", {"units": 1, "on": "2022-03-01"})  # the last: another type's
            async with _Reads(tmp_path / "j.db") as journal:
                journal.seen = []
                await _run_until_flushed(Publisher(journal, nc, only="profile"))
                assert set(journal.seen) == {"profile"}, "not one of the other type's events was read"
                assert await journal.load_checkpoint(partition_name("profile")) == await writer.last_position()
            stored = await journal_events(writer)
        assert sorted(await _ids(nc, "profile")) == sorted(e.key for e in stored if e.entity_type == "profile")
    finally:
        await nc.close()
