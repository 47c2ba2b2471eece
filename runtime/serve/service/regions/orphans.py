"""Events a region wrote for an entity after it was promoted away (the RPO), applied nowhere.

A promotion (`move(..., lost=True)`) records in the entity's claim the seq the new primary writes
from (`primary.py`'s epochs). What the lost region wrote beyond it stays in its journal and its
stream, and reaches every replica when the region returns (its outbox publishing what it had not
published, sourcing resuming for what it had). Three things keep those events out of every history:

- reads of the replica keep an event only from the region that held its seq (`replica.py`);
- the region's views run as `ReplicaViewRunner`, which passes over the same events;
- a view that had applied such events before this process knew of the promotion (the lost
  region's own views, which applied its events while it was the primary) is rebuilt from the
  replica, with the filter: `Orphans` decides, once per claim revision and view (the view's
  `@claims` checkpoint remembers the newest revision it was checked against).

The lost events are the operator's to see, not to lose silently: the returning region names them
in a warning (`region events lost by a promotion`: type, id, seqs) and in `Region.lost`, and they
stay in its journal (nothing deletes them: `memoir events` on that journal shows them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ....journal import Journal
from ....model.errors import MemoirError
from ....streams.view import ViewRunner
from ....streams.view_store import ViewStore
from ....wire.protocol import event_subject
from .primary import Epochs, Primaries, writer_at
from .replica import ReplicaJournal, direct_batch, source_stream
from .replication import replica_stream
from .replication import source_stream as region_stream
from .settings import RegionSettings

log = structlog.get_logger("memoir.region.orphans")

CLAIMS = "@claims"  # a view's checkpoint: the newest claim revision it was checked against


class ReplicaViewRunner(ViewRunner):
    """A view over the region's replica: the events the replica's provenance passes over are not applied."""

    def __init__(self, *args: Any, replica: ReplicaJournal, **kwargs: Any) -> None:
        super().__init__(*args, journal=replica, **kwargs)
        self.replica = replica

    async def _apply(self, entity_type: str, stream: str, msgs: list[Msg], in_journal: bool = False) -> None:
        kept = [msg for msg in msgs if self.replica.keeps(msg)]
        if kept:
            await super()._apply(entity_type, stream, kept, in_journal)


class Orphans:
    """Told each moved entity's epochs as the claims are read (`Primaries.on_epochs`): `drain()` names
    the lost events of what was told so far (at start), `run` handles the rest as it comes, and a
    view calls `check_view` before it runs (`Region._keep_view`). Only the views in `running` (those
    this process runs: in a region of several members, the holder of the view's singleton) are
    checked and rebuilt here."""

    def __init__(
        self,
        region: str,
        replica: ReplicaJournal,
        own: Journal | None,
        primaries: Primaries,
        views: Mapping[str, ViewRunner],
        store: ViewStore,
        replay: Callable[[str], Awaitable[None]],
    ) -> None:
        self.region, self.replica, self.own, self.primaries = region, replica, own, primaries
        self.views, self.store = views, store
        self.replay = replay  # stop, rebuild and run the view again
        self.running: set[str] = set()  # the views this process runs now
        self.lost: dict[tuple[str, str], list[int]] = {}  # (type, id) -> seqs this region wrote that were lost
        self.rebuilt = 0  # views rebuilt because they had applied lost events
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, str, Epochs, int]](float("inf"))

    def close(self) -> None:
        self._send.close()
        self._receive.close()

    def tell(self, entity_type: str, entity_id: str, epochs: Epochs, revision: int) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):  # stopped: its next start reads every claim again
            self._send.send_nowait((entity_type, entity_id, epochs, revision))

    async def drain(self) -> None:
        while True:
            try:
                entity_type, entity_id, epochs, _ = self._receive.receive_nowait()
            except anyio.WouldBlock:
                return
            await self._guarded(entity_type, entity_id, self._name_lost(entity_type, entity_id, epochs))

    async def run(self) -> None:
        async for entity_type, entity_id, epochs, revision in self._receive:
            await self._guarded(entity_type, entity_id, self._name_lost(entity_type, entity_id, epochs))
            for name in list(self.running):
                await self._guarded(entity_type, entity_id, self._check(name, entity_type, entity_id, revision))

    async def check_view(self, name: str) -> None:
        """Before a view runs here: rebuild it if it applied events of an entity moved since it was last checked."""
        for entity_type, entity_id, _, revision in self.primaries.moved_entities():
            await self._guarded(entity_type, entity_id, self._check(name, entity_type, entity_id, revision))

    @staticmethod
    async def _guarded(entity_type: str, entity_id: str, work: Awaitable[None]) -> None:
        try:
            await work
        except MemoirError as exc:  # a replica or journal unreachable now: the next start checks again
            log.warning("region orphans not checked", type=entity_type, id=entity_id, error=str(exc))

    async def _name_lost(self, entity_type: str, entity_id: str, epochs: Epochs) -> None:
        """The events of this region's journal at seqs another region held (its own writes: position > 0)."""
        if self.own is None:
            return
        events = await self.own.read(entity_type, entity_id, from_seq=epochs[0][1])
        lost = [e.seq for e in events if e.position > 0 and writer_at(epochs, e.seq) != self.region]
        if lost and self.lost.get((entity_type, entity_id)) != lost:
            self.lost[(entity_type, entity_id)] = lost
            log.warning(
                "region events lost by a promotion",
                region=self.region,
                type=entity_type,
                id=entity_id,
                seqs=lost,
                writer=writer_at(epochs, lost[0]),
            )

    async def _passed_over(self, entity_type: str, entity_id: str) -> int | None:
        """The replica sequence of the entity's first event a reader passes over (None: none held)."""
        subject = event_subject(self.replica.prefix, entity_type, entity_id)
        start = 1
        while True:
            page = await direct_batch(self.replica.nc, self.replica.stream, start=start, subject=subject)
            for seq, msg in page:
                region = self.replica.origins.get(source_stream(msg.headers) or "")
                if region is not None and not self.replica.keeps(msg):
                    return seq
            if not page:
                return None
            start = page[-1][0] + 1

    async def _check(self, name: str, entity_type: str, entity_id: str, revision: int) -> None:
        """Rebuild the view if it may have applied what a reader now passes over (once per claim revision)."""
        runner = self.views[name]
        if entity_type not in runner.sources:
            return
        stored = await self.store.checkpoints(name)
        if stored.get(CLAIMS, 0) >= revision:
            return  # checked against this claim already (here, or by a process before)
        first = await self._passed_over(entity_type, entity_id)
        applied = max(stored.get(runner.source_key(entity_type), 0), runner.checkpoint(entity_type))
        if first is not None and first <= applied:
            log.warning(
                "region view rebuilt: it applied events lost by a promotion", view=name, type=entity_type, id=entity_id
            )
            await self.replay(name)
            self.rebuilt += 1
        await self.store.transact(name, lambda _: ({}, {CLAIMS: revision}))


class _OneEntity:
    """The provenance of one entity, from its claim read once (a read outside a region's process)."""

    def __init__(self, epochs: Epochs) -> None:
        self.epochs = epochs

    def moved(self) -> bool:
        return len(self.epochs) > 1

    def wrote(self, entity_type: str, entity_id: str, seq: int, region: str) -> bool:
        return writer_at(self.epochs, seq) == region


async def entity_replica(
    nc: NATS, settings: RegionSettings, region: str, entity_type: str, entity_id: str
) -> ReplicaJournal:
    """Region `region`'s replica, to read one entity with its provenance (`memoir region events|state`):
    its claim is read once from the claims bucket (none readable: the replica as stored)."""
    primaries = Primaries(nc, settings)
    primaries.bind()
    try:
        epochs = (await primaries.claim(entity_type, entity_id)).epochs
    except MemoirError:
        epochs = ()
    origins = {region_stream(settings, r, entity_type): r for r, _ in epochs}
    return ReplicaJournal(
        nc, replica_stream(settings, region), prefix=settings.prefix, provenance=_OneEntity(epochs), origins=origins
    )
