"""The HTTP API as a thin ASGI app over the service: every route is a few lines over what NATS serves.

Who may call at all is decided first (`guard.py`: origin, credential). A command is served as a NATS
client's command to its command subject, headers carried over (`Idempotency-Key` becomes
`Memoir-Command-Id`; `traceparent`, `Memoir-*` and, with JWTs, `Authorization` pass as they are), so it
takes the path a NATS client's command takes: the NATS door's validation, its command-id dedupe,
its cluster routing, tracing, metrics and command log, and whatever access check the NATS door
applies. For an entity this member owns, with the process's NATS door at hand (`door`, as
`memoir run` sets), it is that door's own function, in-process: no NATS round trip. Only a command
for another member's entity (or with no door here) is a NATS request, to its owner's own subject.
The reply's JSON is the response body unchanged; only its error code picks the status (`status.py`). Views are read
through the same admin requests `memoir query` makes; an entity's state and history are read from
the journal, as `memoir state` and `memoir events` do.

Routing reads the raw path, so an id holding `/` or `%` arrives percent-encoded and intact: every
segment is percent-decoded on its own. No two routes overlap for any id: an id is always the second
of `/{type}/{id}[/…]`, and the live tails are `/events/{type}` (`events`, `views` and
`openapi.json` are names no entity type may take).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ....engine.history import state_at
from ....model.entity import EntityModel
from ....model.errors import CommandError, EntityForgotten, ErrorCode
from ....wire.protocol import (
    H_AUTHORIZATION,
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_TIMEOUT,
    H_TRACEPARENT,
    Reply,
    check_entity_id,
    command_subject,
    decode_answer,
    encode_error,
    encode_reply,
    encode_result,
    header_id,
    header_timeout,
)
from .._service import Service
from ..journal_reader import JournalReader, key_ring
from ..shard_map import request_owner
from .asgi import Headers, Receive, Scope, Send, header
from .guard import Access, check_json
from .idempotency import IdempotencyKeys
from .operations import PROBES, dead_letter_routes, probe
from .records import event_record
from .request import Disconnected, HttpError, Query, ascii_header, segment
from .status import RETRY_AFTER_S, status_of
from .view_live import live_view, view_count, view_query

log = structlog.get_logger("memoir.http")

Answer = tuple[int, bytes, Headers]  # status (0: answered already), body, extra headers
Handler = Callable[[], Awaitable[Answer]]

PASSED_NO_AUTHORIZATION = {  # HTTP request headers carried onto the NATS command, lower-case -> NATS name
    "memoir-command-id": H_COMMAND_ID,
    "memoir-correlation-id": H_CORRELATION_ID,
    "traceparent": H_TRACEPARENT,
}
PASSED = PASSED_NO_AUTHORIZATION | {"authorization": H_AUTHORIZATION}  # with JWTs, which the NATS door checks
BODY_TIMEOUT_S = 10.0  # a command's body must arrive within this; then 408 and the connection is closed
MAX_HISTORY_PAGE = 1000
JSON_TYPE = [(b"content-type", b"application/json")]


class CommandDoor(Protocol):
    """The NATS door's in-process entry (`NatsDoor.answer`): a command served as one taken off NATS."""

    async def answer(
        self, entity_type: str, entity_id: str, command: str, payload: bytes, headers: dict[str, str]
    ) -> bytes | None: ...


class HttpApi:
    """The ASGI app. `closing` is set on shutdown: live tails end, so the server can stop."""

    def __init__(
        self,
        service: Service,
        *,
        access: Access,
        max_body: int = 1024 * 1024,
        timeout: float = 5.0,
        body_timeout: float = BODY_TIMEOUT_S,
        openapi: Callable[[], bytes],
        tail: Callable[[HttpApi, Scope, Receive, Send, str, Query], Awaitable[None]],
        keys: IdempotencyKeys | None = None,
    ) -> None:
        assert service.nc is not None
        self.service = service
        self.nc = service.nc
        self.prefix = service.prefix
        self.models: dict[str, EntityModel] = service.runtime.models
        self.access = access
        self.max_body = max_body
        self.timeout = timeout
        self.body_timeout = body_timeout
        self.keys = keys
        self.closing = anyio.Event()
        self.ready: Callable[[], bool] | None = None  # /readyz: set by `memoir run` (else: NATS connected)
        self.door: CommandDoor | None = None  # this process's NATS door (set by `memoir run`): commands in-process
        self._openapi = openapi
        self._tail = tail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body, headers = await self._route(scope, receive, send)
        except Disconnected:
            return
        except CommandError as exc:
            status, body, headers = self.error(exc)
        except Exception as exc:  # nothing from outside may take the process down
            log.error("http request failed", path=scope.get("path"), exc_info=exc)
            status, body, headers = self.error(CommandError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        if status:  # 0: the route answered itself (a live tail)
            length = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": JSON_TYPE + length + headers})
            await send({"type": "http.response.body", "body": body})

    def error(self, exc: CommandError) -> Answer:
        return self.answer(status_of(str(exc.code)), encode_error(exc), str(exc.code))

    @staticmethod
    def answer(status: int, body: bytes, code: str = "") -> Answer:
        headers: Headers = []
        if status in (503, 504):
            headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
        elif code == "unauthorized":
            headers.append((b"www-authenticate", b"Bearer"))
        elif status == 408:  # the body is late: this connection is done (after a 413, uvicorn drops the
            headers.append((b"connection", b"close"))  # rest as it comes, so the sender still reads the answer)
        return status, body, headers

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> Answer:
        raw = scope.get("raw_path") or scope["path"].encode()
        segs = raw.split(b"?", 1)[0].decode("latin-1")[1:].split("/")
        method = scope["method"]
        if method == "GET" and len(segs) == 1 and segs[0] in PROBES:  # probes answer without a credential
            return probe(self, segs[0])
        if segs != ["openapi.json"]:  # the document is public; everything else is the owner's
            self.access.check(header(scope, b"authorization"))
        routes = self._routes(scope, receive, send, segs)
        handler = routes.get(method)
        if handler is not None:
            return await handler()
        if routes:
            allowed = ", ".join(sorted(routes))
            status, body, headers = self.error(
                HttpError("method_not_allowed", f"{method} is not allowed here (allowed: {allowed})")
            )
            return status, body, [*headers, (b"allow", allowed.encode())]
        if method == "POST" and len(segs) == 3:
            self.model(segs[0]).command_spec(segs[2])  # unknown_command, naming the known ones
        raise HttpError(
            "not_found",
            f"no route for {method} {scope['path'][:200]!r}: POST /{{type}}/{{id}}/{{command}}, GET /{{type}}/{{id}},"
            " /{type}/{id}/events, /events/{type}, /views/{view}[/{key}], /openapi.json",
        )

    def _routes(self, scope: Scope, receive: Receive, send: Send, segs: list[str]) -> dict[str, Handler]:
        """The methods this path answers, each with its handler. No path shape overlaps another:
        the first segment is `views`, `events` or `openapi.json` (names no entity type may take), or a type."""
        query = Query(scope.get("query_string", b""))
        match segs:
            case ["openapi.json"]:
                return {"GET": lambda: self._document()}
            case ["events", entity_type]:
                return {"GET": lambda: self._live(scope, receive, send, entity_type, query)}
            case ["views", view] if query.text("live") is not None:
                return {"GET": lambda: self._live_view(receive, send, view, query)}
            case ["views", view]:
                return {"GET": lambda: self._view(view, "scan", query)}
            case ["views", view, key]:
                return {"GET": lambda: self._view(view, "get", query, segment(key, "key"))}
            case ["deadletters", *rest]:
                return dead_letter_routes(self, rest, query)
            case [entity_type, raw_id]:
                self.model(entity_type)
                return {"GET": lambda: self._state(entity_type, raw_id, query)}
            case [entity_type, raw_id, name]:
                routes: dict[str, Handler] = {}
                if name == "events":
                    routes["GET"] = lambda: self._history(entity_type, raw_id, query)
                if name in self.model(entity_type).commands:
                    routes["POST"] = lambda: self._command(scope, receive, entity_type, raw_id, name)
                return routes
        return {}

    async def _document(self) -> Answer:
        return 200, self._openapi(), []

    async def _live(self, scope: Scope, receive: Receive, send: Send, entity_type: str, query: Query) -> Answer:
        self.model(entity_type)
        await self._tail(self, scope, receive, send, entity_type, query)
        return 0, b"", []

    async def _live_view(self, receive: Receive, send: Send, view: str, query: Query) -> Answer:
        if view not in self.service.views:
            raise HttpError("unknown_view", f"no view {view[:64]!r} (known: {sorted(self.service.views)})")
        await live_view(self, receive, send, view, query)
        return 0, b"", []

    def model(self, entity_type: str) -> EntityModel:
        model = self.models.get(entity_type)
        if model is None:
            raise HttpError(
                ErrorCode.UNKNOWN_ENTITY_TYPE,
                f"no entity type {entity_type[:64]!r} here (known: {', '.join(sorted(self.models)) or 'none'})",
            )
        return model

    def _entity(self, entity_type: str, raw_id: str) -> tuple[EntityModel, str]:
        return self.model(entity_type), check_entity_id(segment(raw_id, "entity id"))

    # -- commands: served as a NATS client's (by the NATS door in-process, or as a NATS request) -----------

    async def _command(self, scope: Scope, receive: Receive, entity_type: str, raw_id: str, command: str) -> Answer:
        _, entity_id = self._entity(entity_type, raw_id)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        passed = PASSED if self.access.forwards_authorization else PASSED_NO_AUTHORIZATION
        nats_headers = {name: ascii_header(name, headers[h]) for h, name in passed.items() if h in headers}
        key = headers.get("idempotency-key")
        if key is not None:
            key = header_id({"Idempotency-Key": ascii_header("Idempotency-Key", key)}, "Idempotency-Key") or key
            if nats_headers.setdefault(H_COMMAND_ID, key) != key:
                raise HttpError(ErrorCode.INVALID, f"headers Idempotency-Key and {H_COMMAND_ID} differ")
        timeout = header_timeout({H_TIMEOUT: headers[H_TIMEOUT.lower()]}) if H_TIMEOUT.lower() in headers else None
        timeout = timeout or self.timeout
        nats_headers[H_TIMEOUT] = str(max(1, round(timeout * 1000)))
        body = await self._body(receive, headers)
        check_json(headers.get("content-type"), body)
        command_id, claim = nats_headers.get(H_COMMAND_ID), None
        if command_id is not None and self.keys is not None:
            claim = await self.keys.claim(entity_type, entity_id, command_id, command, body)
        router = self.service.router
        owner = None if router is None else router.owner(entity_type, entity_id)
        if self.door is not None and (router is None or owner == router.member):
            data = await self.door.answer(entity_type, entity_id, command, body, nats_headers)
        else:  # another member's (its own subject: no hop), or no door here
            data = await self._request(entity_type, entity_id, command, body, nats_headers, timeout, owner)
        if data is None:  # forwarded, and its owner did not answer in time
            why = f"no reply within {timeout:g}s; retry with the same Idempotency-Key (it may have run)"
            raise HttpError("timeout", why)
        answer = decode_answer(data)
        code = "" if answer.ok or answer.error is None else answer.error.code
        if claim is not None and self.keys is not None and not answer.ok:
            await self.keys.release(claim)  # refused, nothing stored: a corrected retry may use the key
        return self.answer(200 if answer.ok else status_of(code), data, code)

    async def _request(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        owner: str | None,
    ) -> bytes | None:
        """The command as a NATS request (to `owner`'s own subject in a cluster); None if no reply came in time."""
        subject = command_subject(self.prefix, entity_type, entity_id, command)
        try:
            msg = await request_owner(self.nc, owner, self.prefix, subject, body, timeout=timeout, headers=headers)
        except NoRespondersError:
            raise HttpError(ErrorCode.UNAVAILABLE, f"no Memoir runtime is serving {subject} now; retry") from None
        except NatsTimeoutError:
            return None
        except NatsError as exc:  # the connection is closing or reconnecting
            raise HttpError(ErrorCode.UNAVAILABLE, f"NATS is not reachable now ({exc}); retry") from None
        return bytes(msg.data)

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        """The whole body, within `max_body` bytes and `body_timeout` seconds (a half-sent body is cut)."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise HttpError("too_large", f"the body is {length} bytes, the limit is {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    raise HttpError("too_large", f"the body is over the limit of {self.max_body} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        raise HttpError("request_timeout", f"the body did not arrive within {self.body_timeout:g}s")

    # -- reads ------------------------------------------------------------------------------------------

    async def _state(self, entity_type: str, raw_id: str, query: Query) -> Answer:
        """The state now, after event `seq`, as of time `at`, or both (the earlier of the two)."""
        model, entity_id = self._entity(entity_type, raw_id)
        seq = query.integer("seq", None, 0, 2**63 - 1)
        at = query.time("at")
        journal = self.service.journal
        try:
            keys = key_ring(journal) if model.encrypted else None
            value, last = await state_at(journal, model, entity_id, seq=seq, at=at, keys=keys)
        except EntityForgotten as exc:
            raise HttpError(ErrorCode.FORGOTTEN, str(exc)) from None
        if seq is not None and last < seq and at is None:
            raise HttpError("not_found", f"{entity_type} {entity_id!r} has no event {seq} (its last is {last})")
        return 200, encode_reply(Reply(value, last)), []

    async def _history(self, entity_type: str, raw_id: str, query: Query) -> Answer:
        _, entity_id = self._entity(entity_type, raw_id)
        from_seq = query.integer("from_seq", 1, 1, 2**63 - 1)
        limit = query.integer("limit", 100, 1, MAX_HISTORY_PAGE)
        page = await self.service.journal.read(entity_type, entity_id, from_seq=from_seq or 1, limit=limit)
        reader = self.reader()
        return 200, encode_result([await event_record(env, reader) for env in page]), []

    def reader(self) -> JournalReader:
        """Opens encrypted payloads with the journal's key ring, as `memoir events` does."""
        return JournalReader(self.service.journal)

    async def _view(self, view: str, op: str, query: Query, key: str | None = None) -> Answer:
        """The admin request `memoir query` sends; its answer is the body."""
        if view not in self.service.views:
            raise HttpError("unknown_view", f"no view {view[:64]!r} (known: {sorted(self.service.views)})")
        if op == "get":
            payload: dict[str, Any] = {"key": key}
        elif (counted := view_count(query)) is not None:  # how many rows pass `where`
            op, payload = "count", counted
        elif {"where", "order_by", "page"} & query.values.keys():  # a query by declared fields
            op, payload = "query", view_query(query)
        else:
            limit = query.integer("limit", 100, 1, 10_000)
            payload = {"after": query.text("after", ""), "limit": limit}
        subject = f"{self.prefix}.view.{view}.{op}"
        try:
            msg = await self.nc.request(subject, msgspec.json.encode(payload), timeout=self.timeout)
        except (NoRespondersError, NatsTimeoutError, NatsError):
            raise HttpError(ErrorCode.UNAVAILABLE, f"no answer on {subject}; retry") from None
        answer = decode_answer(msg.data)
        if not answer.ok:
            code = answer.error.code if answer.error is not None else "internal"
            return self.answer(status_of(code), msg.data, code)
        if op == "get" and answer.result is None:
            raise HttpError("not_found", f"view {view} has no row {key!r}")
        return 200, msg.data, []
