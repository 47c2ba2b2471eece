"""A view's fast path for event types that are not encrypted: a message of a plain type at its
current version is decoded straight from its payload (no envelope unless the handler takes one, no
key ring), and everything else — an older version to upcast, an event the view does not handle, a
payload that does not decode, a sealed payload left from when the type was encrypted, a message
with a missing header — takes the path that builds the envelope and says what is wrong. Both paths
apply the same events to the same rows. A row read and put back unchanged is not written."""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from support.waiting import eventually

from runtime import Effect, Envelope, EventSourcedEntity, applies, command, event
from runtime.model.entity import model_of
from runtime.streams.handlers import on
from runtime.streams.query_live import Batch
from runtime.streams.view import Rows, View, ViewRunner, plain_events
from runtime.streams.view_store import MemoryViewStore
from runtime.wire.protocol import event_headers, event_subject, events_filter, stream_name

pytestmark = pytest.mark.anyio
PREFIX = "fp"


@event(version=2, upcasters={1: lambda old: {"amount": old["units"]}})
class Added(msgspec.Struct):
    amount: int


class Named(msgspec.Struct):
    name: str


class Ignored(msgspec.Struct):
    why: str


class Tally(EventSourcedEntity[int], name="tally"):
    initial = 0

    @command
    def add(self, n: int, amount: int) -> Effect[int]:
        return self.persist(Added(amount)).reply(lambda s: s)

    @applies
    def added(self, n: int, e: Added) -> int:
        return n + e.amount

    @applies
    def named(self, n: int, e: Named) -> int:
        return n

    @applies
    def ignored(self, n: int, e: Ignored) -> int:
        return n


class Row(msgspec.Struct):
    total: int = 0
    name: str = ""
    last_seq: int = 0


class Totals(View[Row], name="totals", sources=[Tally]):
    @on
    def added(self, rows: Rows[Row], e: Added, env: Envelope) -> None:  # takes the envelope
        row = rows.get(env.entity_id) or Row()
        rows.put(env.entity_id, msgspec.structs.replace(row, total=row.total + e.amount, last_seq=env.seq))

    @on
    def named(self, rows: Rows[Row], e: Named) -> None:  # does not: the fast path builds none
        row = rows.get("names") or Row()
        rows.put("names", msgspec.structs.replace(row, name=row.name + e.name))


def test_the_fast_paths_table_holds_plain_types_at_their_current_version() -> None:
    table = plain_events(Totals.table())
    assert set(table) == {"tally"}
    assert table["tally"]["Added"][0] == "2" and table["tally"]["Named"][0] == "1"
    assert table["tally"]["Ignored"][3] is None  # known, not handled: skipped without decoding


async def test_both_paths_apply_the_same_events(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(name=stream_name(PREFIX, "tally"), subjects=[events_filter(PREFIX, "tally")])
    codec = model_of(Tally).codec
    seqs: dict[str, int] = {}
    position = 0

    async def send(entity_id: str, name: str, version: int, payload: bytes, drop: str | None = None) -> None:
        nonlocal position
        seqs[entity_id] = seqs.get(entity_id, 0) + 1
        position += 1
        env = Envelope(
            entity_type="tally", entity_id=entity_id, seq=seqs[entity_id], position=position, name=name,
            version=version, payload=payload, recorded_at=time.time_ns(),
        )  # fmt: skip
        headers: dict[str, Any] = event_headers(env)
        if drop is not None:
            del headers[drop]
        await js.publish(event_subject(PREFIX, "tally", entity_id), payload, headers=headers)

    await send("a", "Added", 2, codec.encode(Added(5)))  # fast, with an envelope
    await send("a", "Added", 1, b'{"units": 3}')  # an older version: upcast on the envelope path
    await send("b", "Named", 1, codec.encode(Named("x")))  # fast, no envelope
    await send("b", "Ignored", 1, codec.encode(Ignored("n/a")))  # not handled: nothing to do
    await send("c", "Added", 2, b'{"amount": "many"}')  # does not decode: skipped, logged
    await send("c", "Added", 2, b"\x00\x01sealed-looking")  # sealed, and this view has no key ring
    await send("c", "Added", 2, codec.encode(Added(7)), drop="Memoir-Seq")  # not a Memoir event
    await send("c", "Added", 2, codec.encode(Added(1)))
    await send("a/b.c", "Added", 2, codec.encode(Added(2)))  # an id the subject percent-encodes
    await send("b", "Named", 1, codec.encode(Named("y")))

    store = MemoryViewStore()
    runner = ViewRunner(Totals, store, nc, prefix=PREFIX, batch=4)  # batches end between the kinds
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await eventually(lambda: runner.checkpoint("tally") == 10, what="every message read")
        tg.cancel_scope.cancel()
    rows = await runner.query.all()
    assert rows == {
        "a": Row(total=8, last_seq=2),
        "c": Row(total=1, last_seq=4),
        "a/b.c": Row(total=2, last_seq=1),
        "names": Row(name="xy"),
    }
    assert runner.position("tally") == 10


class Flags(View[Row], name="flags", sources=[Tally]):
    @on
    def named(self, rows: Rows[Row], e: Named) -> None:
        row = rows.get("flag") or Row()
        rows.put("flag", msgspec.structs.replace(row, name=e.name))  # often the same row as before


async def test_a_row_put_back_unchanged_is_not_written(nc: NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(name=stream_name(PREFIX, "tally"), subjects=[events_filter(PREFIX, "tally")])
    codec = model_of(Tally).codec
    runner = ViewRunner(Flags, MemoryViewStore(), nc, prefix=PREFIX, batch=1)
    versions: list[int] = []

    async def record(batch: Batch) -> None:
        versions.append(batch.version)

    runner.on_batch.append(record)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        for seq, name in enumerate(["on", "on", "off", "off", "off", "on"], start=1):
            env = Envelope(
                entity_type="tally", entity_id="t", seq=seq, position=seq, name="Named", version=1,
                payload=codec.encode(Named(name)), recorded_at=time.time_ns(),
            )  # fmt: skip
            await js.publish(event_subject(PREFIX, "tally", "t"), env.payload, headers=event_headers(env))
            await eventually(lambda: runner.checkpoint("tally") == seq, what=f"event {seq} applied")  # noqa: B023
        tg.cancel_scope.cancel()
    assert versions == [1, 2, 3], "a batch that changed no row is no new version (no change notice)"
    assert (await runner.query.get("flag")) == Row(name="on")
