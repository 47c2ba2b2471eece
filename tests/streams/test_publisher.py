"""The outbox publisher, checked by an independent plain nats-py reader against the journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import api
from support.reading import journal_events, stream_messages
from support.waiting import eventually

from entities import InventoryItem
from runtime import App, MemoirError, Runtime, SqliteJournal
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats, find_binary, free_port
from runtime.streams.publisher import CHECKPOINT, Publisher, StreamSettings, partition_name
from runtime.wire.nats import AckInbox, PublishError, check_ack, ensure_stream
from runtime.wire.protocol import event_subject, stream_name, token

pytestmark = pytest.mark.anyio

app = App("test", entities=[InventoryItem])
ODD_IDS = ["XYZ-1", "with.dots.in.it", "with spaces", "ünïcødé-ß", "a*b>c", "100%"]


async def _send_some(rt: Runtime, ids: list[str], per_id: int = 3) -> None:
    for entity_id in ids:
        await rt.ask(
            "inventory", entity_id, "open", {"units": 10}, command_id=f"open-{entity_id}", correlation_id="corr-1"
        )
        for i in range(per_id):
            await rt.ask("inventory", entity_id, "receive", {"units": i + 1, "on": "2022-03-01"})


async def test_embedded_server_starts_serves_and_stops(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "n")
    async with server:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.one", b"x")
        assert ack.seq == 1
        await client.close()
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", server.port)


async def test_independent_subscriber_sees_exactly_the_journal(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        async with Service(app, journal, nats_url=nats_server.url) as svc:
            await _send_some(svc.runtime, ODD_IDS)
            assert svc.publisher is not None
            await svc.publisher.flush()
        stored = await journal_events(journal)

    client = await nats.connect(nats_server.url)
    msgs = await stream_messages(client.jetstream(), stream_name("memoir", "inventory"))
    await client.close()

    assert len(msgs) == len(stored) == len(ODD_IDS) * 4
    _follow_on(msgs)
    for msg, env in zip(msgs, stored, strict=True):  # one stream: the journal's order
        assert msg.subject == f"memoir.events.inventory.{token(env.entity_id)}"
        assert msg.subject.count(".") == 3, "an id is exactly one subject token"
        h = msg.headers
        assert h["Nats-Msg-Id"] == f"inventory/{token(env.entity_id)}/{env.seq}"
        assert h["Memoir-Seq"] == str(env.seq)
        assert h["Memoir-Position"] == str(env.position)
        assert h["Memoir-Event"] == env.name
        assert h["Memoir-Event-Version"] == str(env.version)
        assert h["Memoir-Recorded-At"] == str(env.recorded_at)
        assert h.get("Memoir-Command-Id") == (token(env.command_id) if env.command_id else None)
        assert h.get("Memoir-Correlation-Id") == (token(env.correlation_id) if env.correlation_id else None)
        assert msgspec.json.decode(msg.data) == msgspec.json.decode(env.payload)


def _follow_on(msgs: list[Any]) -> None:
    """Each plain message, and each atomic batch's first, names the stream sequence it follows."""
    previous_seq = 0
    for msg in msgs:
        if msg.headers.get("Nats-Batch-Sequence", "1") == "1":
            assert msg.headers["Nats-Expected-Last-Sequence"] == str(previous_seq), "it follows on"
        else:
            assert "Nats-Expected-Last-Sequence" not in msg.headers
        previous_seq = msg.metadata.sequence.stream


@pytest.mark.parametrize("atomic", [True, False])
async def test_a_read_far_behind_goes_as_atomic_batches_where_the_stream_has_them(
    tmp_path: Path, nats_server: EmbeddedNats, atomic: bool
) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        await _fill(journal, [f"sku-{i}" for i in range(80)])  # 320 events, all behind: one read
        client = await nats.connect(nats_server.url)
        publisher = Publisher(journal, client, entity_types=["inventory"], settings=StreamSettings(atomic=atomic))
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run)
            await publisher.flush()
            tg.cancel_scope.cancel()
        msgs = await stream_messages(client.jetstream(), stream_name("memoir", "inventory"))
        await client.close()
        stored = await journal_events(journal)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [f"inventory/{token(e.entity_id)}/{e.seq}" for e in stored]
    assert all(("Nats-Batch-Id" in m.headers) == atomic for m in msgs), "at least ATOMIC_FROM: a batch"
    _follow_on(msgs)


async def _fill(journal: SqliteJournal, ids: list[str]) -> None:
    async with Runtime([InventoryItem], journal) as rt:
        await _send_some(rt, ids)


async def test_a_refusal_inside_a_chain_refuses_everything_after_it(nc: NATS) -> None:
    """What the publisher's one-ack chains rest on, asked of the real server: a message that does not
    follow on is refused, so every later one in the chain is too, and the last one's ack says so."""
    settings = StreamSettings()
    await ensure_stream(nc.jetstream(), settings.config("chain", "thing"))
    acks = AckInbox(nc, lambda: PublishError("connection lost"))
    await acks.open()
    subject = event_subject("chain", "thing", "x")

    def message(n: int, follows: int) -> tuple[str, bytes, dict[str, str]]:
        return subject, b"%d" % n, {"Nats-Expected-Last-Sequence": str(follows)}

    try:
        # the third names the wrong sequence: the fourth and fifth, named right, cannot follow it
        refused = await acks.publish_batch([message(1, 0), message(2, 1), message(3, 1), message(4, 3), message(5, 4)])
        with pytest.raises(PublishError, match="10071"):
            check_ack(await refused)
        info = await nc.jetstream().stream_info(stream_name("chain", "thing"))
        assert info.state.last_seq == 2
        stored = await acks.publish_batch([message(3, 2), message(4, 3), message(5, 4)])
        assert check_ack(await stored)["seq"] == 5
        msgs = [await nc.jetstream().get_msg(stream_name("chain", "thing"), seq=n) for n in range(1, 6)]
        assert [m.data for m in msgs] == [b"1", b"2", b"3", b"4", b"5"]
    finally:
        await acks.close()


async def test_republishing_after_a_lost_checkpoint_adds_no_duplicates(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        async with Service(app, journal, nats_url=nats_server.url) as svc:
            await _send_some(svc.runtime, ODD_IDS[:3], per_id=10)
        total = len(await journal_events(journal))
        # A crash between publishing and saving the checkpoint: the publisher starts from 0 again.
        await journal.save_checkpoint(CHECKPOINT, 0)
        client = await nats.connect(nats_server.url)
        publisher = Publisher(journal, client, entity_types=["inventory"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(publisher.run)
            await publisher.flush()
            tg.cancel_scope.cancel()
        msgs = await stream_messages(client.jetstream(), stream_name("memoir", "inventory"))
        await client.close()
    assert len(msgs) == total
    assert publisher.checkpoint == total
    assert publisher.published == 0, "everything was already in the stream"


async def test_stream_holds_every_event_once_after_nats_restarts_under_load(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "n")
    await server.start()
    try:
        async with SqliteJournal(tmp_path / "j.db") as journal:
            async with Service(app, journal, nats_url=server.url, flush_timeout=60) as svc:

                async def load(k: int) -> None:
                    for i in range(150):
                        await svc.runtime.ask(
                            "inventory", f"sku-{k}", "receive", {"units": 1, "on": "2022-03-01"}, command_id=f"{k}-{i}"
                        )
                        await anyio.lowlevel.checkpoint()

                async with anyio.create_task_group() as tg:
                    for k in range(8):
                        tg.start_soon(load, k)
                    await anyio.sleep(0.05)  # pacing: the load under way
                    await server.stop(kill=True)  # the server dies while events are being published
                    await anyio.sleep(0.3)  # the outage itself, on purpose
                    await server.start()  # same port, same data directory
            stored = await journal_events(journal)
        client = await nats.connect(server.url)
        msgs = await stream_messages(client.jetstream(), stream_name("memoir", "inventory"))
        await client.close()
    finally:
        await server.stop()

    assert len(stored) == 8 * 150
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(
        f"inventory/{e.entity_id}/{e.seq}" for e in stored
    ), "every journal event is in the stream exactly once"
    per_entity: dict[str, list[int]] = {}
    for m in msgs:
        per_entity.setdefault(m.subject, []).append(int(m.headers["Memoir-Seq"]))
    for seqs in per_entity.values():
        assert seqs == list(range(1, len(seqs) + 1)), "per-entity order"


async def test_service_flushes_the_publisher_on_shutdown(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with SqliteJournal(tmp_path / "j.db") as journal:
        async with Service(app, journal, nats_url=nats_server.url) as svc:
            await _send_some(svc.runtime, ["a", "b"], per_id=50)
        # No explicit flush: leaving the service must have published everything (one partition per type).
        assert await journal.load_checkpoint(partition_name("inventory")) == await journal.last_position()
    await eventually(lambda: _count(nats_server, 102), what="102 messages in the stream")


async def _count(server: EmbeddedNats, expected: int) -> bool:
    client = await nats.connect(server.url)
    info = await client.jetstream().stream_info(stream_name("memoir", "inventory"))
    await client.close()
    return bool(info.state.messages == expected)


async def test_ensure_stream_holds_through_concurrent_creators(nc: NATS) -> None:
    """Many processes starting at once create or update one stream: each ends up with it, none fails."""
    js = nc.jetstream()
    windows = [60.0, 90.0, 120.0, 60.0, 90.0, 120.0, 30.0, 45.0]
    async with anyio.create_task_group() as tg:
        for w in windows:
            config = api.StreamConfig(name="RACE", subjects=["race.>"], duplicate_window=w)
            tg.start_soon(ensure_stream, js, config)
    info = await js.stream_info("RACE")
    assert info.config.duplicate_window in windows


async def test_ensure_stream_refusal_is_one_clear_error(nc: NATS) -> None:
    js = nc.jetstream()
    await ensure_stream(js, api.StreamConfig(name="ONE", subjects=["same.>"]))
    with pytest.raises(MemoirError, match=r"stream TWO: .*overlap.*err_code") as caught:
        await ensure_stream(js, api.StreamConfig(name="TWO", subjects=["same.>"]))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_ensure_stream_gives_up_after_its_timeout_without_jetstream(tmp_path: Path) -> None:
    """A server without JetStream never answers the stream API: a bounded wait, then one error."""
    port = free_port()
    async with await anyio.open_process([find_binary(), "-a", "127.0.0.1", "-p", str(port)]) as proc:
        try:
            client = None

            async def connected() -> bool:
                nonlocal client
                try:
                    client = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
                except Exception:  # noqa: BLE001 - not listening yet
                    return False
                return True

            await eventually(connected, 10, "nats-server listening")
            assert client is not None
            with anyio.fail_after(10), pytest.raises(MemoirError, match=r"stream LATE: still failing after 1 s"):
                await ensure_stream(client.jetstream(timeout=0.2), api.StreamConfig(name="LATE"), timeout=1.0)
            await client.close()
        finally:
            proc.terminate()
