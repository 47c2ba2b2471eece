"""What another publisher can send a Memoir connection, byte by byte, against a real nats-server:
nothing ends its read loop. nats-py alone goes deaf for good after one subject that is not UTF-8
(`GuardedClient`, runtime/wire/_guard.py)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from nats.aio.msg import Msg
from support.waiting import eventually

from runtime.wire._guard import GuardedClient, parse_header_lines
from runtime.wire.nats import connect

from .raw import raw_nats
from .servers import nats_server

pytestmark = pytest.mark.anyio

CONF = 'listen: "127.0.0.1:{port}"\n'

HOSTILE: list[tuple[str, bytes, bytes, bytes | None]] = [
    # name, subject, reply, header block
    ("subject not UTF-8", b"t.X\xff\xfe1.get", b"_INBOX.zz", None),
    ("reply not UTF-8", b"t.ok", b"_INBOX.\xff\xfe", None),
    ("both not UTF-8", b"t.\xc3", b"_INBOX.\xc3", None),
    ("status line not UTF-8", b"t.ok", b"_INBOX.zz", b"NATS/1.0 \xff\xfe\xfd\r\n\r\n"),
    ("status description not UTF-8", b"t.ok", b"_INBOX.zz", b"NATS/1.0 503 \xff\xfe\r\n\r\n"),
]


async def test_messages_nats_py_would_die_of_are_dropped_and_the_connection_serves_on(tmp_path: Path) -> None:
    async with nats_server(CONF, tmp_path) as port:
        nc = await connect(f"nats://127.0.0.1:{port}")
        assert isinstance(nc, GuardedClient)
        try:

            async def echo(msg: Msg) -> None:
                await nc.publish(msg.reply, b"pong:" + msg.subject.encode())

            sub = await nc.subscribe("t.>", cb=echo)
            nc.answer_undecodable(sub, b"bad subject")
            await nc.flush()
            async with raw_nats(port) as raw:
                await raw.sub(b"_INBOX.zz", 1)
                for _name, subject, reply, headers in HOSTILE:
                    await raw.pub(subject, b"hi", reply, headers)
                await raw.ping()
                await eventually(lambda: _true(nc.dropped >= 3), 10, "the undecodable messages dropped")
                # The subject was not UTF-8 but the reply was: the subscription's answer, nothing else.
                assert (await raw.next_frame()).payload == b"bad subject"
                # Every subscription and request still works.
                assert (await nc.request("t.after", b"", timeout=5)).data == b"pong:t.after"
                await raw.pub(b"t.raw", b"", b"_INBOX.zz")
                assert (await raw.next_frame()).payload == b"pong:t.raw"
            # The bad-status messages reached `echo` with what nats-py reads of them, or were dropped.
            assert nc.dropped in (3, 4, 5), nc.dropped
        finally:
            await nc.close()


async def _true(value: bool) -> bool:
    return value


async def test_header_values_keep_their_bad_bytes_distinguishable(tmp_path: Path) -> None:
    """Two different command ids that are not UTF-8 must not read as one (nats-py: both U+FFFD)."""
    assert parse_header_lines(b"A: \xff\xfe\r\nB: \xfe\xff\r\n") == {"A": "\udcff\udcfe", "B": "\udcfe\udcff"}
    async with nats_server(CONF, tmp_path) as port:
        nc = await connect(f"nats://127.0.0.1:{port}")
        try:
            got: list[Msg] = []

            async def keep(msg: Msg) -> None:
                got.append(msg)

            await nc.subscribe("h.>", cb=keep)
            await nc.flush()
            async with raw_nats(port) as raw:
                for value in (b"\xff\xfe", b"\xfe\xff", "ünï".encode()):
                    await raw.pub(b"h.x", b"{}", b"", b"NATS/1.0\r\nMemoir-Command-Id: " + value + b"\r\n\r\n")
                await raw.ping()
            await eventually(lambda: _true(len(got) >= 3), 10, "the three messages")
            ids = [(m.headers or {})["Memoir-Command-Id"] for m in got]
            assert ids == ["\udcff\udcfe", "\udcfe\udcff", "ünï"]
            assert [i.isprintable() for i in ids] == [False, False, True]
        finally:
            await nc.close()


async def test_a_full_subscription_buffer_drops_and_counts(tmp_path: Path) -> None:
    """nats-py drops what exceeds a subscription's pending limits; connect's client counts and logs it."""
    async with nats_server(CONF, tmp_path) as port:
        nc = await connect(f"nats://127.0.0.1:{port}")
        try:
            release = anyio.Event()

            async def stuck(msg: Msg) -> None:
                await release.wait()

            await nc.subscribe("s.>", cb=stuck, pending_bytes_limit=3000)
            await nc.flush()
            async with raw_nats(port) as raw:
                for _ in range(10):
                    await raw.pub(b"s.x", b"x" * 1000)
                await raw.ping()
            await eventually(lambda: _true(nc.dropped >= 7), 10, "the messages over the limit dropped")
            release.set()
        finally:
            await nc.close()
