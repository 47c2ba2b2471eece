"""A view far behind catches up from the co-located journal, then hands over to its stream: each event
once, across events arriving meanwhile, a stream behind the journal, a kill mid-catch-up, and
crypto-shredding and timers handled as on the stream path."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest
from crypto.people import EmailsView, app
from nats.aio.client import Client as NATS
from support.waiting import eventually

from entities.social import Post, Published
from runtime import Envelope, Journal, Service, SqliteJournal, SqliteViewStore, Unavailable
from runtime.journal.base import Page
from runtime.model.entity import model_of
from runtime.model.errors import JournalError
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.handlers import on
from runtime.streams.publisher import Publisher
from runtime.streams.view import Rows, View, ViewRunner
from runtime.streams.view_store import Work

pytestmark = pytest.mark.anyio

PREFIX = "cu"


class Seen(msgspec.Struct):
    times: int = 0


class Counting(View[Seen], name="counting", sources=[Post]):
    """One row per event ever applied, counting how often: exactly once means every row is 1."""

    @on
    def published(self, rows: Rows[Seen], e: Published, env: Envelope) -> None:
        key = f"{env.entity_id}/{env.seq}"
        row = rows.get(key) or Seen()
        rows.put(key, Seen(row.times + 1))


async def _append(journal: Journal, start: int, n: int) -> None:
    """Posts p{start} … p{start+n-1}, one event each, appended 100 at a time (the journal's group commit)."""
    codec = model_of(Post).codec

    async def one(i: int) -> None:
        env = Envelope(
            entity_type="post", entity_id=f"p{i}", seq=1, name="Published", version=1,
            payload=codec.encode(Published(f"a{i % 7}", "x")), recorded_at=time.time_ns(),
        )  # fmt: skip
        await journal.append([env], 0)

    for chunk in range(start, start + n, 100):
        async with anyio.create_task_group() as tg:
            for i in range(chunk, min(chunk + 100, start + n)):
                tg.start_soon(one, i)


async def _rows(store: SqliteViewStore) -> dict[str, int]:
    out: dict[str, int] = {}
    after = ""
    while page := await store.scan("counting", after=after, limit=1000):
        out.update((k, msgspec.json.decode(v, type=Seen).times) for k, v in page)
        after = page[-1][0]
    return out


async def _all_once(store: SqliteViewStore, n: int) -> None:
    async def done() -> bool:
        return len(await _rows(store)) >= n

    await eventually(done, what=f"{n} events in the view")
    rows = await _rows(store)
    assert rows == {f"p{i}/1": 1 for i in range(n)}, "every event applied, none twice"


def _runner(
    store: SqliteViewStore, nc: NATS, journal: SqliteJournal, page: int = 300, transaction: int = 10_000
) -> ViewRunner:
    return ViewRunner(
        Counting, store, nc, prefix=PREFIX, journal=journal, catchup_behind=100, catchup_page=page,
        catchup_transaction=transaction,
    )  # fmt: skip


async def test_catch_up_from_the_journal_while_events_keep_arriving(tmp_path: Path, nc: NATS) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, SqliteViewStore(tmp_path / "v.db") as store:
        await _append(journal, 0, 3000)
        runner = _runner(store, nc, journal)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Publisher(journal, nc, prefix=PREFIX, entity_types=["post"]).run)
            tg.start_soon(runner.run)
            for start in range(3000, 4000, 50):  # during the catch-up and the hand-over
                await _append(journal, start, 50)
                await anyio.sleep(0.005)  # pacing: the appends spread over the catch-up
            await _all_once(store, 4000)
            await _append(journal, 4000, 100)  # after it: the stream's
            await _all_once(store, 4100)
            tg.cancel_scope.cancel()
        assert 3000 <= runner.from_journal < 4100
        assert runner.checkpoint("post") > 0, "the stream took over"
        assert runner.position("post") == 4100 == await journal.last_position()


async def test_a_stream_behind_the_journal_is_skipped_up_to_the_hand_over(tmp_path: Path, nc: NATS) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal, SqliteViewStore(tmp_path / "v.db") as store:
        await _append(journal, 0, 1000)
        runner = _runner(store, nc, journal)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)  # nothing published yet: the stream does not even exist
            await _all_once(store, 1000)
            assert runner.from_journal == 1000
            tg.start_soon(Publisher(journal, nc, prefix=PREFIX, entity_types=["post"]).run)
            await _append(journal, 1000, 20)
            await _all_once(store, 1020)  # the stream's first 1,000 skipped by position, then 20 new
            tg.cancel_scope.cancel()
        assert runner.applied == 1020


class Killed(BaseException):
    """The process dies here."""


class DyingStore(SqliteViewStore):
    """Dies on its `die_at`-th transaction: before it commits, or right after."""

    def __init__(self, path: Path, die_at: int, after_commit: bool) -> None:
        super().__init__(path)
        self.die_at = die_at
        self.after_commit = after_commit
        self.transactions = 0

    async def transact(self, view: str, work: Work) -> None:
        self.transactions += 1
        if self.transactions == self.die_at and not self.after_commit:
            raise Killed
        await super().transact(view, work)
        if self.transactions == self.die_at:
            raise Killed


@pytest.mark.parametrize("how", ["before-commit", "after-commit", "cancelled"])
async def test_killed_mid_catch_up_then_restarted_applies_each_event_once(how: str, tmp_path: Path, nc: NATS) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        await _append(journal, 0, 3000)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Publisher(journal, nc, prefix=PREFIX, entity_types=["post"]).run)
            async with DyingStore(tmp_path / "v.db", 0 if how == "cancelled" else 4, how == "after-commit") as store:
                first = _runner(store, nc, journal, page=400, transaction=400)  # a page per transaction
                if how == "cancelled":
                    with anyio.move_on_after(20):
                        async with anyio.create_task_group() as inner:
                            inner.start_soon(first.run)
                            while first.applied < 1000:
                                await anyio.lowlevel.checkpoint()
                            inner.cancel_scope.cancel()  # wherever it is: maybe inside a transaction
                else:
                    with pytest.raises(Killed):  # inside the catch-up, before any stream is followed
                        await first.run()
                assert 0 < first.applied < 3000
            await _append(journal, 3000, 500)  # while it was down
            async with SqliteViewStore(tmp_path / "v.db") as store:
                again = _runner(store, nc, journal, page=400)  # pages waiting share a transaction
                tg.start_soon(again.run)
                await _all_once(store, 3500)
                assert again.from_journal < 3500, "resumed from its checkpoint, not from the start"
            tg.cancel_scope.cancel()


async def test_journal_catch_up_skips_forgotten_and_timer_events_as_the_stream_does(tmp_path: Path) -> None:
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        SqliteJournal(tmp_path / "j.db") as journal,
        Service(app, journal, nats_url=server.url) as svc,
        SqliteViewStore(tmp_path / "late.db") as store,
    ):
        await svc.runtime.ask("person", "ann", "change", {"email": "ann@x"})
        await svc.runtime.ask("person", "bob", "remind", {"email": "bob@x"})  # an event and a timer
        await svc.runtime.ask("person", "cid", "change", {"email": "cid@x"})
        await svc.runtime.ask("person", "ann", "erase", {"reason": "asked"})  # Erased, then memoir.Forgotten
        assert svc.nc is not None
        late = ViewRunner(
            EmailsView, store, svc.nc, prefix=svc.prefix, streams=svc.stream_for,
            keys=svc.runtime.keys, journal=journal, catchup_behind=1,
        )  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(late.run)

            async def bob_and_cid() -> bool:
                return {k for k, _ in await store.scan("emails")} == {"bob", "cid"}

            await eventually(bob_and_cid, what="the late view to hold bob and cid only")
            await svc.runtime.ask("person", "dan", "change", {"email": "dan@x"})  # then from the stream

            async def dan_too() -> bool:
                return {k for k, _ in await store.scan("emails")} == {"bob", "cid", "dan"}

            await eventually(dan_too, what="the stream's next event")
            tg.cancel_scope.cancel()
        assert late.from_journal == await journal.last_position() - 1
        assert late.forgotten == 2  # ann's sealed events (EmailChanged, Erased); her Forgotten is handled


async def test_catch_up_from_the_jetstream_journal_hands_over_at_its_sequence(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NATS
) -> None:
    """The journal is the stream: its position is the stream sequence, the hand-over needs no search."""
    from runtime.journal.jetstream import JetStreamJournal
    from runtime.streams._runner import event_streams

    async with JetStreamJournal(nats_server.url) as journal, SqliteViewStore(tmp_path / "v.db") as store:
        await _append(journal, 0, 600)
        runner = ViewRunner(
            Counting, store, nc, prefix=journal.prefix, streams=event_streams(journal.prefix, journal),
            journal=journal, catchup_behind=100, catchup_page=250,
        )  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await _all_once(store, 600)
            await _append(journal, 600, 30)
            await _all_once(store, 630)
            tg.cancel_scope.cancel()
        assert runner.from_journal == 600
        assert runner.checkpoint("post") == 630 == runner.position("post")


class LosingJournal(SqliteJournal):
    """Its storage goes away for the view's catch-up (pages of 300) after the first page; the
    outbox publisher's reads still work."""

    reads = 0

    async def read_types(self, types: Collection[str], from_position: int = 1, limit: int = 1000) -> Page:
        if limit == 300:
            self.reads += 1
            if self.reads > 1:
                raise Unavailable("gone", "for this test")
        return await super().read_types(types, from_position, limit)


async def test_a_journal_lost_mid_catch_up_leaves_the_rest_to_the_stream(tmp_path: Path, nc: NATS) -> None:
    async with LosingJournal(tmp_path / "j.db") as journal, SqliteViewStore(tmp_path / "v.db") as store:
        await _append(journal, 0, 1000)
        runner = _runner(store, nc, journal)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Publisher(journal, nc, prefix=PREFIX, entity_types=["post"]).run)
            tg.start_soon(runner.run)
            await _all_once(store, 1000)
            tg.cancel_scope.cancel()
        assert runner.from_journal == 300 and runner.position("post") == 1000


async def test_first_above_finds_the_hand_over_by_position(nc: NATS) -> None:
    from runtime.streams._pull import first_above
    from runtime.wire.protocol import H_POSITION

    js = nc.jetstream()
    await js.add_stream(name="FA", subjects=["fa.>"])
    positions = [3, 5, 6, 10, 11, 40]  # increasing, with gaps (other types' events live elsewhere)
    for p in positions:
        await js.publish(f"fa.{p}", b"", headers={H_POSITION: str(p)})
    await js.delete_msg("FA", 4)  # a hole in the stream (position 10): the search steps over it
    # sequence 4 is gone, so starting there is starting at 5 (position 11)
    expect = {0: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 4, 9: 4, 10: 4, 11: 6, 39: 6, 40: 7, 99: 7}
    assert {p: await first_above(js, "FA", p) for p in expect} == expect


async def test_a_view_from_before_position_checkpoints_catches_up_from_the_journal(tmp_path: Path, nc: NATS) -> None:
    import sqlite3

    async with SqliteJournal(tmp_path / "j.db") as journal:
        await _append(journal, 0, 500)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Publisher(journal, nc, prefix=PREFIX, entity_types=["post"]).run)
            async with SqliteViewStore(tmp_path / "v.db") as store:
                old = ViewRunner(Counting, store, nc, prefix=PREFIX)  # the stream path only
                async with anyio.create_task_group() as inner:
                    inner.start_soon(old.run)
                    await _all_once(store, 500)
                    inner.cancel_scope.cancel()
            with sqlite3.connect(tmp_path / "v.db") as db:  # as stored by a release without them
                db.execute("DELETE FROM view_checkpoints WHERE stream LIKE '@position:%'")
            db.close()
            await _append(journal, 500, 1000)  # downtime
            async with SqliteViewStore(tmp_path / "v.db") as store:
                again = _runner(store, nc, journal)
                tg.start_soon(again.run)
                await _all_once(store, 1500)
                assert again.from_journal == 1000, "only what it had not applied, from the journal"
            tg.cancel_scope.cancel()


class FailingJournal(SqliteJournal):
    """Its third read by position fails, as a journal that went away would."""

    reads = 0

    async def read_types(self, types: Collection[str], from_position: int = 1, limit: int = 1000) -> Page:
        self.reads += 1
        if self.reads == 3:
            raise JournalError("the journal went away")
        return await super().read_types(types, from_position, limit)


async def test_a_failed_read_ahead_stops_the_catch_up_after_the_pages_read_before_it(tmp_path: Path) -> None:
    """Pages are read one ahead of their commits: a read that fails raises its own JournalError
    (which the runner answers by following the streams), after the pages before it landed."""
    async with FailingJournal(tmp_path / "j.db") as journal, SqliteViewStore(tmp_path / "v.db") as store:
        await _append(journal, 0, 1000)
        runner = ViewRunner(Counting, store, NATS(), prefix=PREFIX, journal=journal, catchup_behind=1, catchup_page=300)
        with pytest.raises(JournalError, match="went away"):
            await runner.catch_up_from_journal()
        assert len(await _rows(store)) == 600
        assert runner.position("post") == 600


class CountingJournal(SqliteJournal):
    reads = 0

    async def read_types(self, types: Collection[str], from_position: int = 1, limit: int = 1000) -> Page:
        self.reads += 1
        return await super().read_types(types, from_position, limit)


class SlowFirstStore(SqliteViewStore):
    """Its first transaction waits until the journal has been read `reads` times (pages wait behind it)."""

    def __init__(self, path: Path, journal: CountingJournal, reads: int) -> None:
        super().__init__(path)
        self.journal = journal
        self.reads = reads
        self.transactions = 0

    async def transact(self, view: str, work: Work) -> None:
        self.transactions += 1
        while self.transactions == 1 and self.journal.reads < self.reads:
            await anyio.sleep(0.001)
        await super().transact(view, work)


@pytest.mark.parametrize("transaction", [100, 1000])
async def test_pages_read_while_the_store_writes_share_a_transaction(tmp_path: Path, transaction: int) -> None:
    """Pages of 100 read ahead while a transaction is stored go into the next one together, up to
    `catchup_transaction` events; each event once either way."""
    async with CountingJournal(tmp_path / "j.db") as journal:
        await _append(journal, 0, 3000)
        async with SlowFirstStore(tmp_path / "v.db", journal, reads=11 if transaction > 100 else 2) as store:
            runner = ViewRunner(
                Counting, store, NATS(), prefix=PREFIX, journal=journal, catchup_behind=1, catchup_page=100,
                catchup_transaction=transaction,
            )  # fmt: skip
            assert await runner.catch_up_from_journal() == 3000
            await _all_once(store, 3000)
            if transaction == 100:
                assert store.transactions == 30, "a page per transaction"
            else:
                assert store.transactions <= 20, "pages that waited were stored together"
                assert runner.position("post") == 3000
