"""Moving an entity's primary to another region: the old one stops, replication catches up, the new one
starts at the right seq (`memoir region move TYPE ID --to R`).

1. The mover reads the entity's claim (its region, and the entry's revision).
2. Release, in the old primary (`{prefix}.r.{old}.region.release`): its fence refuses the entity
   from now on, its live actor is passivated after the turn in flight, and it answers the
   entity's head in its journal: the last seq it will ever write there (until moved back).
3. Adopt, in the new primary (`{prefix}.r.{new}.region.adopt`): it waits until its replica holds
   the entity's events up to that head, puts them into its own journal at their seqs (with
   positions below 1, so its outbox never publishes them again: every region has them already),
   then claims the entity with the revision read in 1 (a KV update that fails if anything moved
   it meanwhile; the claim records that it writes from head + 1: `primary.py`'s epochs) and
   starts serving it, at head + 1.

Between 2 and 3, commands for the entity answer `overloaded` (the old fence's "moved": retry);
no two regions write it at any moment, and no event is lost or doubled (the test moves an entity
under load). A move stopped half-way leaves the entity unserved until it is run again: both
steps can be repeated. The new primary's journal needs `restore_events` (SQLite, PostgreSQL,
memory). A repeated command id across a move gets its first reply back (the release carries the
replies of the entity's last REPLIES commands; after a promotion, without a release, a repeat is
recognised but answered without its first result).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ....engine.runtime import Runtime
from ....journal import Journal
from ....model.errors import MemoirError
from ..forwarding import Router
from .primary import Primaries, decode_claim, encode_claim
from .replica import ReplicaJournal
from .settings import RegionSettings

log = structlog.get_logger("memoir.region.moves")

POLL = 0.05
ADOPT_QUEUE = "memoir-region-adopt"  # one member of the region adopts an entity
REPLIES = 1000  # the last commands of a moved entity whose replies go with it (dedupe keeps at most this many)


class MoveError(MemoirError):
    """A move could not be done; the message says which step and why."""


class _Ask(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    id: str
    head: int = 0
    revision: int = 0
    replies: dict[int, bytes] = {}  # seq -> the encoded reply of the command that stored it (the last REPLIES)
    was: str = ""  # the claim as the mover read it (its epochs), or the old region's name


class _Answer(msgspec.Struct):
    ok: bool
    head: int = 0
    replies: dict[int, bytes] = {}
    error: str | None = None


def subject(settings: RegionSettings, region: str, step: str) -> str:
    return f"{settings.region_prefix(region)}.region.{step}"


class MoveDoor:
    """A region member's side of moves: `release` and `adopt` requests, served until cancelled."""

    def __init__(
        self,
        nc: NATS,
        settings: RegionSettings,
        runtime: Runtime,
        journal: Journal,
        replica: ReplicaJournal,
        primaries: Primaries,
        *,
        catch_up: float = 30.0,
        router: Router | None = None,
    ) -> None:
        self.nc, self.settings, self.runtime, self.journal = nc, settings, runtime, journal
        self.replica, self.primaries, self.catch_up = replica, primaries, catch_up
        self.router = router  # a region of several members: the entity's owner in the region answers a release

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:

            def serving(step: Any) -> Any:
                async def cb(msg: Msg) -> None:
                    tg.start_soon(self._answer, msg, step)

                return cb

            subs = [  # every member releases (each one's fence refuses the entity); one adopts
                await self.nc.subscribe(
                    subject(self.settings, self.settings.name, "release"), cb=serving(self.release)
                ),
                await self.nc.subscribe(
                    subject(self.settings, self.settings.name, "adopt"), queue=ADOPT_QUEUE, cb=serving(self.adopt)
                ),
            ]
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    for sub in subs:
                        await sub.unsubscribe()

    async def _answer(self, msg: Msg, step: Any) -> None:
        try:
            ask = msgspec.json.decode(msg.data, type=_Ask)
            answer: _Answer | None = await step(ask)
        except (MemoirError, msgspec.ValidationError, msgspec.DecodeError, NatsError) as exc:
            answer = _Answer(ok=False, error=str(exc))
        if answer is None:
            return  # another member of the region answers
        log.info(
            "region move step", region=self.settings.name, step=step.__name__, head=answer.head, error=answer.error
        )
        if msg.reply:
            await msg.respond(msgspec.json.encode(answer))

    async def release(self, ask: _Ask) -> _Answer | None:
        """Stop writing the entity here; answers its head in this region's journal, and the replies
        of its last REPLIES commands with ids (the replica carries the ids, not the replies).

        In a region of several members every member refuses the entity from now on, and the one
        that owns it (its shard's) answers, once its turn in flight is over; the others say nothing.
        """
        self.primaries.release(ask.type, ask.id)
        await self.runtime.passivate_where(lambda t, i: (t, i) == (ask.type, ask.id))  # after its turn in flight
        if self.router is not None and self.router.owner(ask.type, ask.id) != self.router.member:
            return None
        head = await self.journal.head(ask.type, ask.id)
        recent = await self.journal.read(ask.type, ask.id, from_seq=max(1, head - REPLIES + 1))
        return _Answer(ok=True, head=head, replies={e.seq: e.reply for e in recent if e.reply is not None})

    async def adopt(self, ask: _Ask) -> _Answer:
        """Take the entity's events up to `head` from the replica into this journal, then claim it.

        `head` -1 (a promotion: the old region is lost and cannot say its head) takes what the
        replica holds: the events the old region had not replicated are lost (the RPO)."""
        restore = getattr(self.journal, "restore_events", None)
        if restore is None:
            raise MoveError(f"the journal {self.journal.url} cannot take a moved entity's events (no restore_events)")
        if ask.head < 0:
            ask = msgspec.structs.replace(ask, head=await self.replica.head(ask.type, ask.id))
        events = await self.replica.read(ask.type, ask.id, to_seq=ask.head)
        with anyio.move_on_after(self.catch_up):
            while (events[-1].seq if events else 0) < ask.head:
                await anyio.sleep(POLL)
                events = await self.replica.read(ask.type, ask.id, to_seq=ask.head)
        if [e.seq for e in events] != list(range(1, ask.head + 1)):
            raise MoveError(
                f"{ask.type}/{ask.id}: the replica of {self.settings.name} holds seqs up to "
                f"{events[-1].seq if events else 0}, not {ask.head}, after {self.catch_up:g}s"
            )
        await restore([msgspec.structs.replace(e, position=-e.position, reply=ask.replies.get(e.seq)) for e in events])
        head = await self.journal.head(ask.type, ask.id)
        if head != ask.head:
            raise MoveError(
                f"{ask.type}/{ask.id}: this region's journal is at seq {head}, the old primary's at {ask.head}"
            )
        region, epochs = decode_claim(ask.was.encode())
        await self.primaries.take(ask.type, ask.id, ask.revision, previous=epochs or ((region, 1),), start=head + 1)
        return _Answer(ok=True, head=head)


async def _request(nc: NATS, to: str, ask: _Ask, timeout: float) -> _Answer:
    try:
        msg = await nc.request(to, msgspec.json.encode(ask), timeout=timeout)
        answer = msgspec.json.decode(msg.data, type=_Answer)
    except NatsError as exc:
        raise MoveError(f"no answer on {to}: {type(exc).__name__}") from None
    except msgspec.DecodeError as exc:
        raise MoveError(f"{to}: a bad answer: {exc}") from None
    if not answer.ok:
        raise MoveError(f"{to}: {answer.error}")
    return answer


async def move(
    nc: NATS,
    settings: RegionSettings,
    entity_type: str,
    entity_id: str,
    to: str,
    *,
    timeout: float = 60.0,
    lost: bool = False,
) -> tuple[str, int]:
    """Move the entity's primary to region `to`; returns (the old region, the seq the new one starts after).

    `lost`: promote `to` without the old region's release (it is gone): `to` starts after what its
    replica holds. The old region, if it comes back, learns the claim (its KV watch, read before
    it serves again) and refuses the entity. What it had not replicated when it was lost is lost
    from the entity's history (the RPO: benchmarks/regions.py measures it): the claim records the
    seq `to` starts at, so when those events reach the replicas (its outbox publishing on return,
    or sourcing resuming) no read or view applies them, and the returning region names them
    (`Region.lost`, a warning in its log).
    """
    if to not in settings.regions:
        raise MoveError(f"region {to!r} is not one of {list(settings.regions)}")
    primaries = Primaries(nc, settings)
    primaries.bind()
    try:
        claim = await primaries.claim(entity_type, entity_id)
    except MemoirError as exc:
        raise MoveError(f"cannot read the entity's claim: {exc}") from None
    old = claim.region or settings.pinned.get(entity_type)
    if old is None:
        raise MoveError(f"{entity_type}/{entity_id} has no primary yet: its first command will claim one")
    if old == to:
        return old, 0
    was = encode_claim(claim.epochs).decode() if claim.epochs else old
    ask = _Ask(entity_type, entity_id, revision=claim.revision)
    released = (
        _Answer(ok=True, head=-1) if lost else await _request(nc, subject(settings, old, "release"), ask, timeout)
    )
    ask = _Ask(entity_type, entity_id, head=released.head, revision=claim.revision, replies=released.replies, was=was)
    return old, (await _request(nc, subject(settings, to, "adopt"), ask, timeout)).head
