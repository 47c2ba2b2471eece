"""A region's replica stream read as a journal: `state`, `events`, history and views, served locally.

`ReplicaJournal` is read-only: every region's events as this region's replica stream holds them
(`replication.py`), read with JetStream's batched direct get (ADR-31, nats-server 2.11+), which
any of the stream's replicas answers without a consumer, so reads go on while the regions are
cut (creating a consumer needs the supercluster's meta leader, which a cut takes away).

Positions are the replica stream's sequence, as in the JetStream journal: a view given this
journal (`event_stream()` names the replica stream) checkpoints and catches up by them.

Consistency: eventual. An entity's events here are a prefix of its primary's journal, in seq
order, behind it by the replication lag (measured in benchmarks/regions.py); a read in the
primary region after a write there can still miss that write for that long. A seq seen twice
(a replay beyond the duplicate window) is read once.

Provenance: an event is kept only from the region that held its seq (`Primaries.wrote`, from the
claims' epochs), known by the source stream JetStream names in each sourced message's
`Nats-Stream-Source` header. After a promotion, the lost region's events beyond what the new
primary adopted reach the replica when it returns; `read`, `read_all` and the region's views
(`keeps`) pass over them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ....journal.base import Journal
from ....model.envelope import Envelope, Snapshot
from ....model.errors import JournalError, Unavailable
from ....wire.protocol import H_SEQ, envelope_from_message, event_subject, parse_event_subject

PAGE = 1000  # messages per direct-get batch
H_STATUS = "Status"
H_SEQUENCE = "Nats-Sequence"
H_SUBJECT = "Nats-Subject"
H_SOURCE = "Nats-Stream-Source"  # set by JetStream on a sourced message: "{stream}[:{hash}] {seq} {filter} {dest}"


class Provenance(Protocol):
    """Which region wrote which seqs of the entities that moved (`Primaries`)."""

    def moved(self) -> bool: ...

    def wrote(self, entity_type: str, entity_id: str, seq: int, region: str) -> bool: ...


def source_stream(headers: Mapping[str, str] | None) -> str | None:
    """The stream a sourced message came from (None: not sourced)."""
    value = (headers or {}).get(H_SOURCE)
    if not value:
        return None
    return value.split(" ", 1)[0].split(":", 1)[0]


class ReadOnly(JournalError):
    """A replica takes no writes: the entity's primary region writes it."""


async def direct_batch(
    nc: NATS, stream: str, *, start: int, subject: str | None, batch: int = PAGE, timeout: float = 5.0
) -> list[tuple[int, Msg]]:
    """Up to `batch` messages of `stream` from sequence `start` (matching `subject`), as (seq, message).

    One request, answered by messages and an end-of-batch status (204); none found is 404.
    """
    request: dict[str, object] = {"seq": start, "batch": batch}
    if subject is not None:
        request["next_by_subj"] = subject
    inbox = nc.new_inbox()
    out: list[tuple[int, Msg]] = []
    done = anyio.Event()
    failed: list[str] = []

    async def collect(msg: Msg) -> None:
        status = (msg.headers or {}).get(H_STATUS)
        if status is not None:
            if status not in ("204", "404"):
                failed.append(f"{status} {(msg.headers or {}).get('Description', '')}".strip())
            done.set()
            return
        out.append((int((msg.headers or {})[H_SEQUENCE]), msg))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        with anyio.move_on_after(timeout) as scope:
            await done.wait()
        if scope.cancelled_caught:
            raise Unavailable("replica unreachable", f"no answer from stream {stream} within {timeout:g}s")
        if failed:
            raise Unavailable("replica read failed", f"stream {stream}: {failed[0]}")
        return out
    finally:
        await sub.unsubscribe()


class ReplicaJournal(Journal):
    """`ReplicaJournal(nc, "MEMOIR_REGION_EU", prefix="memoir")` — every region's events, read here."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        *,
        prefix: str,
        provenance: Provenance | None = None,
        origins: Mapping[str, str] | None = None,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.prefix = prefix  # the global prefix: the replica's subjects are {prefix}.events.{type}.{id}
        self.url = f"replica://{stream}"
        self.provenance = provenance
        self.origins = dict(origins or {})  # source stream -> the region whose members write it
        self.passed_over = 0  # events read and left out: written by a region that no longer held their seq

    def _written_by_holder(self, entity_type: str, entity_id: str, seq: int, headers: Mapping[str, str] | None) -> bool:
        assert self.provenance is not None
        region = self.origins.get(source_stream(headers) or "")
        if region is None or self.provenance.wrote(entity_type, entity_id, seq, region):
            return True
        self.passed_over += 1
        return False

    def keeps(self, msg: Msg) -> bool:
        """Whether a message of the replica stream is part of its entity's history (a view's filter)."""
        if self.provenance is None or not self.provenance.moved():
            return True
        headers = msg.headers or {}
        try:
            entity_type, entity_id = parse_event_subject(headers.get(H_SUBJECT, msg.subject))
            seq = int(headers[H_SEQ])
        except (KeyError, ValueError):
            return True  # not an event: the view names what is wrong with it
        return self._written_by_holder(entity_type, entity_id, seq, headers)

    def _kept(self, env: Envelope, msg: Msg) -> bool:
        if self.provenance is None or not self.provenance.moved():
            return True
        return self._written_by_holder(env.entity_type, env.entity_id, env.seq, msg.headers)

    def event_stream(self, entity_type: str) -> str:
        return self.stream

    def _envelope(self, seq: int, msg: Msg) -> Envelope:
        subject = (msg.headers or {}).get(H_SUBJECT, msg.subject)
        env = envelope_from_message(subject, msg.headers, msg.data)
        return msgspec.structs.replace(env, position=seq)

    async def read(
        self, entity_type: str, entity_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[Envelope]:
        subject = event_subject(self.prefix, entity_type, entity_id)
        out: list[Envelope] = []
        start, last = 1, 0
        while True:
            page = await direct_batch(self.nc, self.stream, start=start, subject=subject)
            for seq, msg in page:
                env = self._envelope(seq, msg)
                if env.seq <= last or not self._kept(env, msg):
                    continue  # stored twice (beyond the duplicate window): read once
                last = env.seq
                if env.seq < from_seq:
                    continue
                if (to_seq is not None and env.seq > to_seq) or (limit is not None and len(out) >= limit):
                    return out
                out.append(env)
            if len(page) < PAGE:
                return out
            start = page[-1][0] + 1

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[Envelope]:
        page = await direct_batch(
            self.nc, self.stream, start=max(1, from_position), subject=f"{self.prefix}.events.>", batch=limit
        )
        out = [(self._envelope(seq, msg), msg) for seq, msg in page]
        return [env for env, msg in out if self._kept(env, msg)]

    async def head(self, entity_type: str, entity_id: str) -> int:
        events = await self.read(entity_type, entity_id)
        return events[-1].seq if events else 0

    async def last_position(self) -> int:
        info = await self.nc.jetstream().stream_info(self.stream)
        return int(info.state.last_seq)

    async def append(self, events: Sequence[Envelope], expected_seq: int) -> list[Envelope]:
        raise ReadOnly(f"{self.url} is a replica: the entity's primary region writes it")

    async def delete(self, entity_type: str, entity_id: str, to_seq: int | None = None) -> None:
        raise ReadOnly(f"{self.url} is a replica: deletes happen in the primary region")

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        raise ReadOnly(f"{self.url} keeps no snapshots")

    async def load_snapshot(self, entity_type: str, entity_id: str, max_seq: int | None = None) -> Snapshot | None:
        return None  # none kept: a read folds the events from the first

    async def delete_snapshots(self, entity_type: str, entity_id: str, to_seq: int) -> None:
        raise ReadOnly(f"{self.url} keeps no snapshots")

    async def load_checkpoint(self, name: str) -> int:
        return 0

    async def save_checkpoint(self, name: str, position: int) -> None:
        raise ReadOnly(f"{self.url} keeps no checkpoints")

    async def is_deleted(self, entity_type: str, entity_id: str) -> bool:
        return False
