"""A region's door for commands: `{prefix}.cmd.>` in any region reaches the entity's primary region.

Every region runs doors in one queue group; NATS gateways deliver a queue message to a member
of the group in the sender's own cluster when there is one, so a command is taken in the
region it was sent in. The door asks the primary rule (`primary.py`) which region writes the
entity and passes the request on, payload and headers as they came (the command id, so the
primary's dedupe answers a repeat; the bearer token, checked there), to
`{prefix}.r.{region}.cmd.…`, which that region's members serve. The primary's answer goes back
to the caller byte for byte: the same results and errors as a command sent in the primary region.

A primary in another region gets `remote_timeout` (2 s by default): when the gateway is cut,
NATS first blackholes the request (the door answers `unavailable` when the timeout passes),
then, once the servers see the gateway gone (about two missed pings), answers "no responders"
and the door says `unavailable` at once. Local entities do not cross the gateway and are
unaffected. `unavailable` after a timeout means "may have landed": retry with the same command
id and the primary's dedupe makes the retry safe.
"""

from __future__ import annotations

import anyio
import anyio.abc
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ....model.errors import CommandError, ErrorCode, Overloaded, Unavailable
from ....wire.protocol import command_subject, encode_error, header_timeout, parse_command_subject
from .primary import Primaries
from .settings import RegionSettings

log = structlog.get_logger("memoir.region.door")

QUEUE = "memoir-region-door"


class RegionDoor:
    """`await tg.start(door.run)`; cancel the task group to stop."""

    def __init__(self, nc: NATS, settings: RegionSettings, primaries: Primaries, *, workers: int = 64) -> None:
        self.nc = nc
        self.settings = settings
        self.primaries = primaries
        self.workers = workers
        self.forwarded: dict[str, int] = {}  # region -> commands passed on to it
        self.unavailable = 0  # commands answered `unavailable` by the door itself
        self._prefix_tokens = len(settings.prefix.split("."))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[Msg](self.workers * 16)

        async def take(msg: Msg) -> None:
            try:
                send.send_nowait(msg)
            except anyio.WouldBlock:
                await self._answer(msg, Overloaded(ErrorCode.OVERLOADED, "the region door is full: retry later"))

        sub = await self.nc.subscribe(f"{self.settings.prefix}.cmd.>", queue=QUEUE, cb=take)
        try:
            async with anyio.create_task_group() as tg, send, receive:
                for _ in range(self.workers):
                    tg.start_soon(self._work, receive.clone())
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    async def _work(self, receive: anyio.abc.ObjectReceiveStream[Msg]) -> None:
        async with receive:
            async for msg in receive:
                await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        try:
            entity_type, entity_id, command = parse_command_subject(msg.subject, self._prefix_tokens)
            headers = dict(msg.headers or {})
            asked = header_timeout(headers)
            region = await self.primaries.of(entity_type, entity_id)
        except CommandError as exc:
            await self._answer(msg, exc)
            return
        local = region == self.settings.name
        timeout = self.settings.local_timeout if local else self.settings.remote_timeout
        if asked is not None:
            timeout = min(timeout, asked)
        target = command_subject(self.settings.region_prefix(region), entity_type, entity_id, command)
        try:
            reply = await self.nc.request(target, msg.data, timeout=timeout, headers=headers or None)
        except NoRespondersError:
            await self._answer(msg, Unavailable("region unreachable", f"no member of region {region} serves {target}"))
            return
        except (NatsTimeoutError, TimeoutError):
            await self._answer(
                msg,
                Unavailable(
                    "region unreachable",
                    f"no answer from region {region} within {timeout:g}s: the command may have landed; "
                    "retry with the same command id",
                ),
            )
            return
        self.forwarded[region] = self.forwarded.get(region, 0) + 1
        await self._respond(msg, reply.data)

    async def _answer(self, msg: Msg, exc: CommandError) -> None:
        if exc.code == ErrorCode.UNAVAILABLE:
            self.unavailable += 1
        await self._respond(msg, encode_error(exc))

    @staticmethod
    async def _respond(msg: Msg, data: bytes) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(data)
        except NatsError as exc:
            log.info("region door reply lost", subject=msg.subject, error=str(exc))
