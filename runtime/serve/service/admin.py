"""View queries and administration over NATS request/reply.

- `{prefix}.view.{name}.get` with `{"key": "…"}` → `{"ok": true, "result": row or null}`
- `{prefix}.view.{name}.scan` with `{"after": "", "limit": 100}` → `{"ok": true, "result": [[key, row], …]}`
- `{prefix}.view.{name}.query` with a query's JSON form (`runtime.streams.query`: where, order_by,
  limit, page) → `{"ok": true, "result": {"rows": [[key, row], …], "next": token or null, "version": n}}`
- `{prefix}.view.{name}.count` with `{"where": …}` → `{"ok": true, "result": n}`
- `{prefix}.view.{name}.changes`: published by the process that runs the view after each batch it
  commits, `{"version": n, "reset": false, "rows": {key: row or null}}`. A live subscriber subscribes
  here first, then queries: it applies the notices above the answer's `version`, in order; a version
  that skips one (a notice lost, or dropped because it fell behind) means query again (resync).
- `{prefix}.admin.replay` with `{"view": "…"}` → rebuild that view from history; `{"ok": true}`
- `{prefix}.admin.deadletters.{list,show,replay,purge}`: consumers' parked events (`dead_letter_admin.py`)
- `{prefix}.admin.forget` with `{"type": "…", "id": "…"}` → forget an entity of an encrypted type
  (destroy its data key); `{"ok": true, "result": {"forgotten": true, "already": false}}`. The
  owner then publishes `{prefix}.admin.forgotten` (same body): every process drops its cached key.

Errors use the command protocol's envelope and codes (`invalid` for a bad payload,
`unknown_view` for a view this service does not host).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ...model.errors import CommandError, ErrorCode
from ...streams.query import CountQuery, Query
from ...streams.query_live import Batch
from ...wire.nats import respond
from ...wire.protocol import encode_error, encode_result
from ._service import Service
from .dead_letter_admin import DeadLetterAdmin
from .journal_reader import ForgetArgs, ForgetResult

log = structlog.get_logger("memoir.admin")

REBUILD_SECONDS = 60.0
"""How long `admin.replay` waits for the view to stop (its batch in flight applied) and be reset;
the answer comes then, and history replays as the view runs again. Its clients wait at least this
long, whatever their own timeout: a loaded member may take seconds to get there."""


class GetArgs(msgspec.Struct, forbid_unknown_fields=True):
    key: str


class ScanArgs(msgspec.Struct, forbid_unknown_fields=True):
    after: str = ""
    limit: int = 100


class ReplayArgs(msgspec.Struct, forbid_unknown_fields=True):
    view: str


def _error(code: str, message: str) -> bytes:
    return encode_error(CommandError(code, message))


def _decode(data: bytes, tp: type[Any]) -> Any:
    return msgspec.json.decode(data or b"{}", type=tp)


class Admin:
    def __init__(self, service: Service, *, queue: str = "memoir") -> None:
        self.service = service
        self.queue = queue
        self._subs: list[Any] = []
        self.dead_letters = DeadLetterAdmin(service)

    async def start(self) -> None:
        nc = self.service.nc
        assert nc is not None
        p = self.service.prefix
        for name, runner in self.service.views.items():
            runner.on_batch.append(self._notices(name))
        self._subs = [
            await nc.subscribe(f"{p}.view.*.*", queue=self.queue, cb=self._on_view),
            # every process hears it: each rebuilds the views it runs, and only those answer
            await nc.subscribe(f"{p}.admin.replay", cb=self._on_replay),
            # every process hears these: the entity's owner forgets it and then says so, and every
            # process drops the key and actor it cached
            await nc.subscribe(f"{p}.admin.forget", cb=self._on_forget),
            await nc.subscribe(f"{p}.admin.forgotten", cb=self._on_forgotten),
            # any one process answers: a replay's commands reach each owner through its sender
            await nc.subscribe(f"{p}.admin.deadletters.*", queue=self.queue, cb=self._on_dead_letters),
        ]

    async def stop(self) -> None:
        for runner in self.service.views.values():
            runner.on_batch.clear()
        for sub in self._subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
        self._subs = []

    def _notices(self, name: str) -> Callable[[Batch], Awaitable[None]]:
        """What the view's runner calls after each committed batch: its change notice on NATS."""
        subject = f"{self.service.prefix}.view.{name}.changes"

        async def publish(batch: Batch) -> None:
            rows = {k: None if v is None else msgspec.Raw(v) for k, v in batch.writes.items()}
            body = msgspec.json.encode({"version": batch.version, "reset": batch.reset, "rows": rows})
            nc = self.service.nc
            if nc is not None:
                with contextlib.suppress(NatsError):  # a lost notice shows as a version gap: resync
                    await nc.publish(subject, body)

        return publish

    async def _on_view(self, msg: Msg) -> None:
        *_, name, op = msg.subject.split(".")
        if op == "changes":
            return  # a change notice, for live subscribers
        try:
            query = self.service.view(name)
        except KeyError as exc:
            return await self._answer(msg, _error("unknown_view", str(exc.args[0])))
        try:
            if op == "get":
                args = _decode(msg.data, GetArgs)
                row = await query.get(args.key)
                body = encode_result(row)
            elif op == "scan":
                sargs = _decode(msg.data, ScanArgs)
                if not 1 <= sargs.limit <= 10_000:
                    raise msgspec.ValidationError("limit must be between 1 and 10000 - at `$.limit`")
                body = encode_result([[k, v] for k, v in await query.scan(after=sargs.after, limit=sargs.limit)])
            elif op == "query":
                page, version = await query.run_at_version(_decode(msg.data, Query))
                body = encode_result({"rows": [[k, v] for k, v in page.rows], "next": page.next, "version": version})
            elif op == "count":
                body = encode_result(await query.count(_decode(msg.data, CountQuery).where))
            else:
                body = _error("unknown_command", f"views answer get, scan, query and count, not {op!r}")
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            body = _error("invalid", f"view {name} {op}: {exc}")
        except CommandError as exc:  # a query that names what is wrong (invalid), storage away (unavailable)
            body = encode_error(exc)
        await self._answer(msg, body)

    async def _on_replay(self, msg: Msg) -> None:
        try:
            args = _decode(msg.data, ReplayArgs)
            with anyio.fail_after(REBUILD_SECONDS):
                if not await self.service.replay(args.view):
                    return  # another member of the cluster runs this view, and answers
            body = encode_result()
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            body = _error("invalid", f"replay: {exc}")
        except KeyError as exc:
            body = _error("unknown_view", str(exc.args[0]))
        log.info("view replay requested", subject=msg.subject)
        await self._answer(msg, body)

    async def _on_forget(self, msg: Msg) -> None:
        runtime = self.service.runtime
        try:
            args = _decode(msg.data, ForgetArgs)
            if not self._owns(args.entity_type, args.entity_id):
                return  # another member of the cluster owns the entity, and answers
            with anyio.fail_after(30):
                done = await runtime.forget(args.entity_type, args.entity_id)
            body = encode_result(ForgetResult(forgotten=True, already=not done))
            log.info("entity forgotten on request", entity_type=args.entity_type, entity_id=args.entity_id)
            nc = self.service.nc
            assert nc is not None
            # after the key is gone: every process drops what it cached of the entity
            await nc.publish(f"{self.service.prefix}.admin.forgotten", msgspec.json.encode(args))
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            body = _error(ErrorCode.INVALID, f"forget: {exc}")
        except CommandError as exc:
            body = encode_error(exc)
        except TimeoutError:
            body = _error(ErrorCode.UNAVAILABLE, "forget: the entity stayed busy for 30 s; retry")
        await self._answer(msg, body)

    def _owns(self, entity_type: str, entity_id: str) -> bool:
        """Whether this process answers for the entity (always, outside a cluster; a bad id: forget says why)."""
        admits = self.service.runtime.host.admits
        if admits is None or entity_type not in self.service.runtime.models:
            return True
        try:
            return admits(entity_type, entity_id)
        except Exception:  # noqa: BLE001 - an id the router cannot place is refused by forget(), with its reason
            return True

    async def _on_forgotten(self, msg: Msg) -> None:
        try:
            args = _decode(msg.data, ForgetArgs)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            log.warning("bad admin.forgotten message ignored", error=str(exc))
            return
        self.service.runtime.evict(args.entity_type, args.entity_id)

    async def _on_dead_letters(self, msg: Msg) -> None:
        await self._answer(msg, await self.dead_letters.answer(msg.subject.rsplit(".", 1)[1], msg.data))

    @staticmethod
    async def _answer(msg: Msg, body: bytes) -> None:
        if msg.reply:
            with contextlib.suppress(NatsError):
                await respond(msg, body)  # not msg.respond: it echoes the request's headers
