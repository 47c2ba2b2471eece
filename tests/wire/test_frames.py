"""Messages Memoir encodes as NATS frames itself (`wire/frames.py`) arrive exactly as the same
messages sent by nats-py's own `publish`; what nats-py would refuse or rewrite goes by it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.wire import frames

pytestmark = pytest.mark.anyio

MESSAGES: list[frames.Message] = [
    ("t.events.inventory.XYZ-1", b'{"units": 3}', {"Nats-Msg-Id": "inventory/XYZ-1/1", "Memoir-Seq": "1"}),
    ("t.events.inventory.a%2Eb", b"", {"Memoir-Event": "Received", "Empty": ""}),
    ("t.events.inventory.x", b"\r\n\x00binary\xff", {"Padded": "  spaces around  ", "Colon": "a:b:c"}),
    ("t.events.inventory.y", b"x" * 70_000, {"Nats-Batch-Id": "b1", "Nats-Batch-Sequence": "2"}),
    ("t.events.inventory.z", b"{}", {"Broken": "line\r\nInjected: yes"}),  # nats-py's path: newlines go
    ("t.events.inventory.w", b"{}", {"Bad Name": "x", "Good": "y"}),  # nats-py refuses the name
    ("t.events.inventory.v", b"{}", {"Paren(s)": "x"}),  # printable, but not a token: refused too
    ("t.events.inventory.u", b"{}", {}),  # no headers at all
]


@pytest.fixture
async def nc(tmp_path: Path) -> AsyncIterator[NATS]:
    async with EmbeddedNats(tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        yield client
        await client.close()


async def _received(nc: NATS, send: frames.Message, via_frames: bool) -> tuple[str, str, bytes, dict[str, str]] | str:
    got: list[Msg] = []

    async def take(msg: Msg) -> None:
        got.append(msg)

    sub = await nc.subscribe("t.>", cb=take)
    try:
        if via_frames:
            await frames.publish(nc, [send], ["reply.to"])
        else:
            await nc.publish(send[0], send[1], reply="reply.to", headers=send[2])
        await nc.flush()
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.005)
    except Exception as exc:  # noqa: BLE001 - the refusal is the answer compared
        return type(exc).__name__
    finally:
        await sub.unsubscribe()
    (msg,) = got
    return msg.subject, msg.reply, msg.data, dict(msg.headers or {})


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m[0].rsplit(".", 1)[1])
async def test_a_message_arrives_as_nats_py_sends_it(nc: NATS, message: frames.Message) -> None:
    assert await _received(nc, message, via_frames=True) == await _received(nc, message, via_frames=False)


async def test_many_messages_go_in_one_write_in_order(nc: NATS) -> None:
    got: list[Msg] = []

    async def take(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe("t.>", cb=take)
    writes = 0
    send_command = nc._send_command

    async def counted(cmd: bytes, priority: bool = False) -> None:
        nonlocal writes
        writes += 1
        await send_command(cmd, priority)

    nc._send_command = counted  # type: ignore[method-assign]
    batch = [(f"t.events.e.{i}", b"%d" % i, {"Memoir-Seq": str(i)}) for i in range(500)]
    await frames.publish(nc, batch, [""] * 499 + ["last.reply"])
    await nc.flush()
    with anyio.fail_after(5):
        while len(got) < 500:
            await anyio.sleep(0.01)
    assert writes == 1
    assert [(m.subject, m.data, m.headers) for m in got] == [(s, p, h) for s, p, h in batch]
    assert [m.reply for m in got] == [""] * 499 + ["last.reply"]
    assert nc.stats["out_msgs"] >= 500


async def test_a_message_over_the_servers_limit_is_refused_as_nats_py_refuses_it(nc: NATS) -> None:
    big = ("t.events.e.big", b"x" * (nc.max_payload + 1), {"Memoir-Seq": "1"})
    with pytest.raises(nats.errors.MaxPayloadError):
        await frames.publish(nc, [MESSAGES[0], big], ["", ""])
