"""What only the JetStream journal has to prove: the server's own checks refuse a stale writer's atomic
batch, an acknowledged append survives a SIGKILL of nats-server, and a service on it needs no outbox."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import nats
import pytest
from support.journals import ev
from support.waiting import eventually

from entities.social import CountPosts, Post, PostsByAuthor, Profile
from runtime import App, ConfigError, Conflict, Envelope
from runtime.journal.jetstream import JetStreamJournal
from runtime.model.errors import DuplicateCommand
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats

pytestmark = pytest.mark.anyio


async def test_the_server_refuses_a_stale_writers_atomic_batch(tmp_path: Path) -> None:
    async with (
        EmbeddedNats(tmp_path / "n", sync="always") as server,
        JetStreamJournal(server.url) as one,
        JetStreamJournal(server.url) as two,
    ):
        assert await two.head("thing", "x") == 0  # `two` now believes the subject is empty
        await one.append([ev("x", 1, b'"one"')], 0)
        with pytest.raises(Conflict):  # passes two's own check; the server refuses it
            await two.append([ev("x", 1, b'"two"'), ev("x", 2, b'"two"'), ev("x", 3, b'"two"')], 0)
        assert [e.payload for e in await one.read("thing", "x")] == [b'"one"']
        assert await one.last_position() == 1, "none of the batch was stored"
        # after the conflict `two` re-reads and can go on
        assert [e.seq for e in await two.append([ev("x", 2)], await two.head("thing", "x"))] == [2]


async def test_group_commit_one_stale_append_fails_alone(tmp_path: Path) -> None:
    """Many entities' appends go out as one atomic batch; when the server refuses it for one stale
    expectation, that append is the only one that fails and the others are stored once each."""
    async with (
        EmbeddedNats(tmp_path / "n", sync="always") as server,
        JetStreamJournal(server.url) as one,
        JetStreamJournal(server.url) as two,
    ):
        ids = [f"e{i}" for i in range(40)]
        for i in ids:
            await one.append([ev(i, 1)], 0)
        await two.append([ev("e7", 2, b'"two"')], 1)  # behind `one`'s back: its cached head is stale
        batches = one._writes.batches
        results: dict[str, object] = {}

        async def write(i: str) -> None:
            try:
                results[i] = [e.seq for e in await one.append([ev(i, 2), ev(i, 3)], 1)]
            except Conflict as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i in ids:
                tg.start_soon(write, i)
        assert one._writes.batches - batches < len(ids), "the appends were grouped"
        assert isinstance(results.pop("e7"), Conflict)
        assert results == {i: [2, 3] for i in ids if i != "e7"}
        assert [e.payload for e in await one.read("thing", "e7")] == [b"{}", b'"two"']
        everything = await one.read_all(1, limit=1000)
        assert len(everything) == 40 + 1 + 39 * 2, "no event stored twice, none lost"
        assert [e.position for e in everything] == list(range(1, len(everything) + 1))
        for i in ids:
            seqs = [e.seq for e in everything if e.entity_id == i]
            assert seqs == ([1, 2] if i == "e7" else [1, 2, 3])


async def test_an_acknowledged_append_survives_a_sigkill_of_the_server(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "n", sync="always")
    await server.start()
    try:
        async with JetStreamJournal(server.url) as journal:
            stored = await journal.append([ev("x", 1), ev("x", 2)], 0)
            stored += await journal.append([ev("x", 3)], 2)
            await server.stop(kill=True)  # no flush, no goodbye
        await server.start()  # same data directory and port
        async with JetStreamJournal(server.url) as journal:
            assert await journal.read("thing", "x") == stored
            assert await journal.head("thing", "x") == 3
    finally:
        await server.stop()


async def test_a_service_on_the_jetstream_journal_runs_no_outbox(tmp_path: Path) -> None:
    app = App("js", entities=[Post, Profile], views=[PostsByAuthor], consumers=[CountPosts])
    async with EmbeddedNats(tmp_path / "n", sync="always") as server:
        async with JetStreamJournal(server.url) as journal, Service(app, journal, nats_url=server.url) as svc:
            assert svc.publisher is None
            for i in range(30):
                await svc.runtime.ask("post", f"p{i}", "publish", {"author": f"a{i % 3}", "text": "x"})

            async def counted() -> bool:
                rows = await svc.view("posts_by_author").all()
                counts = [(await svc.runtime.ask("profile", f"a{k}", "get")).result.posts for k in range(3)]
                return {k: r.posts for k, r in rows.items()} == {"a0": 10, "a1": 10, "a2": 10} and counts == [10] * 3

            await eventually(counted, 30, "the view and the profiles to count every post")
        client = await nats.connect(server.url)
        names = [s.config.name for s in await client.jetstream().streams_info()]
        await client.close()
    assert "MEMOIR_EVENTS" in names and "MEMOIR_EVENTS_POST" not in names, "the journal stream is the event stream"


def cmd(entity_id: str, seq: int, command_id: str, reply: bytes) -> Envelope:
    return msgspec.structs.replace(ev(entity_id, seq), command_id=command_id, reply=reply)


async def test_a_repeated_command_id_inside_a_group_commit_fails_alone(tmp_path: Path) -> None:
    """The server refuses a whole atomic batch holding one repeated id (10201) without saying which;
    the repeat then answers DuplicateCommand with the first reply, every other append is stored once."""
    async with EmbeddedNats(tmp_path / "n", sync="always") as server, JetStreamJournal(server.url) as journal:
        ids = [f"e{i}" for i in range(40)]
        for i in ids:
            await journal.append([cmd(i, 1, f"{i}-first", b'"1"')], 0)
        results: dict[str, object] = {}

        async def write(i: str) -> None:
            command_id = "e7-first" if i == "e7" else f"{i}-second"  # e7 repeats its first command
            try:
                results[i] = [e.seq for e in await journal.append([cmd(i, 2, command_id, b'"2"')], 1)]
            except DuplicateCommand as exc:
                results[i] = exc

        batches = journal._writes.batches
        async with anyio.create_task_group() as tg:
            for i in ids:
                tg.start_soon(write, i)
        assert journal._writes.batches - batches < len(ids), "the appends were grouped"
        repeat = results.pop("e7")
        assert isinstance(repeat, DuplicateCommand) and (repeat.seq, repeat.reply) == (1, b'"1"')
        assert results == {i: [2] for i in ids if i != "e7"}
        everything = await journal.read_all(1, limit=1000)
        assert len(everything) == 40 + 39
        assert [e.command_id for e in await journal.read("thing", "e7")] == ["e7-first"]


async def test_command_ids_hold_across_a_sigkill_of_the_server(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "n", sync="always")
    await server.start()
    try:
        async with JetStreamJournal(server.url) as journal:
            await journal.append([cmd("x", 1, "once", b'"first"')], 0)
        await server.stop(kill=True)
        await server.start()
        async with JetStreamJournal(server.url) as journal:
            with pytest.raises(DuplicateCommand) as info:
                await journal.append([cmd("x", 2, "once", b'"again"')], 1)
            assert (info.value.seq, info.value.reply) == (1, b'"first"')
            assert await journal.find_command("thing", "x", "once") == (1, b'"first"')
            assert await journal.head("thing", "x") == 1
    finally:
        await server.stop()


async def test_a_truncated_first_write_is_still_a_repeat_within_the_window(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "n", sync="always") as server, JetStreamJournal(server.url) as journal:
        await journal.append([cmd("t", 1, "early", b"1")], 0)
        await journal.append([cmd("t", 2, "late", b"2")], 1)
        await journal.delete("thing", "t", to_seq=2)
        with pytest.raises(DuplicateCommand) as info:
            await journal.append([cmd("t", 3, "early", b"3")], 2)
        assert (info.value.seq, info.value.reply) == (2, None), "its reply went with it; the floor stands in"
        assert await journal.read("thing", "t") == []


async def test_the_duplicate_window_is_a_url_option(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "n") as server:
        async with JetStreamJournal(f"{server.url}?duplicate_window=300") as journal:
            info = await journal.js.stream_info(journal.stream)
            assert info.config.duplicate_window == 300
            assert journal.url.endswith("?prefix=memoir&duplicate_window=300")
        for bad in ("0", "soon", "-5"):
            with pytest.raises(ConfigError, match=f"duplicate_window='{bad}'"):
                JetStreamJournal(f"{server.url}?duplicate_window={bad}")


async def test_stored_messages_carry_no_position_header_their_sequence_is_the_position(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "n") as server, JetStreamJournal(server.url) as journal:
        await journal.append([ev("x", 1), ev("x", 2)], 0)
        await journal.append([ev("y", 1)], 0)
        nc = await nats.connect(server.url)
        try:
            raw = [await nc.jetstream().get_msg(journal.stream, seq=s) for s in (1, 2, 3)]
        finally:
            await nc.close()
        assert all("Memoir-Position" not in (m.headers or {}) for m in raw)
        assert [(m.headers or {})["Memoir-Seq"] for m in raw] == ["1", "2", "1"]
        assert [(e.entity_id, e.seq, e.position) for e in await journal.read_all(1)] == [
            ("x", 1, 1),
            ("x", 2, 2),
            ("y", 1, 3),
        ]


async def test_recovery_never_pairs_a_head_with_events_that_miss_a_write(tmp_path: Path) -> None:
    """A write that lands while an entity is read (the member that owned it a moment ago finishing
    its turn) must not give a head past the events read: the next append would then pass the
    server's check on a state that misses that write (seen in the fault tests: a reply of 74 for
    the event at seq 75). The interleaving is forced: `two` appends right after `one` read."""
    async with (
        EmbeddedNats(tmp_path / "n", sync="always") as server,
        JetStreamJournal(server.url) as one,
        JetStreamJournal(server.url) as two,
    ):
        for seq in (1, 2):
            await two.append([ev("x", seq)], seq - 1)
        read = one._read
        interleaved = False

        async def read_then_another_writes(*args: object) -> list[Envelope]:
            nonlocal interleaved
            events = await read(*args)  # type: ignore[arg-type]
            if not interleaved:
                interleaved = True
                await two.append([ev("x", 3)], 2)
            return events

        one._read = read_then_another_writes  # type: ignore[method-assign]
        recovery = await one.recover("thing", "x")
        assert interleaved
        assert [e.seq for e in recovery.events] == [1, 2, 3]  # read again, whole
        assert recovery.head == 3
