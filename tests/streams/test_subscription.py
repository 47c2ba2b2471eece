"""The pull loop's own pieces against a real server: the stream sequence read off the ack subject
is nats-py's, and the puller hands over every message once, in order, in batches."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from support.waiting import eventually

from runtime.streams._pull import Puller, pull_loop, stream_sequence

pytestmark = pytest.mark.anyio


async def _puller_on(nc: NATS, stream: str, messages: int) -> Puller:
    """A stream holding `messages` messages ("0", "1", …) and a started puller on an AckAll durable."""
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"]))
    for i in range(messages):
        await js.publish(f"{stream.lower()}.{i % 3}", str(i).encode())
    await js.add_consumer(stream, config=api.ConsumerConfig(durable_name="d", ack_policy=api.AckPolicy.ALL))
    puller = Puller(nc, stream, "d")
    await puller.start()
    return puller


async def test_stream_sequence_and_batches_match_nats_py(nc: NATS) -> None:
    puller = await _puller_on(nc, "S", 25)
    got: list[Msg] = []
    while batch := await puller.fetch(10, idle_timeout=0.2):
        assert len(batch) <= 10
        got += batch
        await batch[-1].ack()
    await puller.stop()
    assert [m.data for m in got] == [str(i).encode() for i in range(25)]
    assert [stream_sequence(m) for m in got] == [m.metadata.sequence.stream for m in got] == list(range(1, 26))


def test_stream_sequence_falls_back_for_other_ack_forms() -> None:
    v2 = Msg(_client=None, reply="$JS.ACK.dom.acchash.S.d.1.42.7.1700000000000000000.3.rnd")  # type: ignore[arg-type]
    assert stream_sequence(v2) == v2.metadata.sequence.stream == 42


async def test_deliveries_after_a_request_gave_up_come_first_next_time(nc: NATS) -> None:
    """With AckAll, dropping them and acknowledging a later message would lose them for good."""
    puller = await _puller_on(nc, "L", 8)
    assert await puller._request({"batch": 5, "no_wait": True}, 0.0) == []  # gave up before the answer
    await eventually(lambda: len(puller._msgs) == 5, 5, "the answer arriving after all")
    first = await puller.fetch(10, idle_timeout=0.2)
    rest = await puller.fetch(10, idle_timeout=0.2)
    assert [m.data for m in first + rest] == [str(i).encode() for i in range(8)]
    assert await puller.stop() == []


async def test_pull_loop_takes_the_connection_explicitly(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="P", subjects=["memoir.events.thing.*"]))
    for i in range(12):
        await js.publish(f"memoir.events.thing.e{i % 4}", str(i).encode())
    got: list[bytes] = []

    async def handle(msgs: list[Msg]) -> None:
        got.extend(m.data for m in msgs)
        await msgs[-1].ack()
        if len(got) >= 12:
            tg.cancel_scope.cancel()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(
                    pull_loop, js, nc=nc, prefix="memoir", stream="P", entity_type="thing", owner="o", handle=handle
                )
            )
    assert got == [str(i).encode() for i in range(12)]
