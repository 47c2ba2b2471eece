"""View queries over HTTP: `GET /views/{view}?where=…&order_by=…&limit=…&page=…` (`view_query`
builds the query door's body), `?count=true&where=…` (`view_count`: how many rows pass), and
`?live=1&where=…`, a live query as Server-Sent Events.

The gateway follows the view as any NATS client may (`admin.py`): it subscribes to the view's
change notices first, then asks the query door for the result at a version, then applies the
notices above that version, in order. Frames:

    event: snapshot   id: <version>   data: {"rows": [[key, row], …], "version": n}
    event: added | changed | removed   id: <version>   data: {"key": …, "row": row or null}
    event: resync     data: {"reason": …}   (a notice was lost or dropped: the stream ends; reconnect)

The snapshot is one answer of at most 10,000 rows (a bigger result is `invalid`: narrow the
where), so it is at one version. Heartbeat comments keep proxies open; the stream ends when the
client goes or the gateway stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio
import msgspec
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ....model.errors import CommandError, ErrorCode
from ....streams.query import MAX_LIMIT, CountQuery, Query, QueryError
from ....streams.query_live import Batch, diff
from ....streams.query_text import parse_where, query_from_text
from .asgi import Receive, Send, end_with_client_or_gateway
from .request import HttpError
from .request import Query as Params

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS


class HttpApi(Protocol):
    """What a live view uses of the HTTP API (`app.HttpApi`), so this module never imports it back."""

    prefix: str
    nc: NATS
    timeout: float
    closing: anyio.Event


HEARTBEAT_S = 5.0
BUFFER = 1000  # notices held for a slow client; beyond, NATS drops them and the gap means resync


class _Notice(msgspec.Struct):
    version: int
    reset: bool = False
    rows: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)  # a deleted row: null


class _Page(msgspec.Struct):
    rows: list[tuple[str, msgspec.Raw]]
    next: str | None
    version: int


class _Answer(msgspec.Struct):
    ok: bool
    result: _Page | None = None
    error: dict[str, object] | None = None


def view_query(params: Params) -> dict[str, object]:
    """The query door's body from the URL's parameters; a bad one is `invalid` naming what is wrong."""
    limit = params.integer("limit", 100, 1, MAX_LIMIT) or 100
    try:
        query = query_from_text(params.text("where"), params.text("order_by"), limit, params.text("page"))
    except QueryError as exc:
        raise HttpError(ErrorCode.INVALID, exc.message) from None
    body: dict[str, object] = msgspec.to_builtins(query)
    return body


def view_count(params: Params) -> dict[str, object] | None:
    """The count door's body when the URL asks for a count (`count=true` and maybe `where`), else None.
    A count reads `where` only: order_by, page, limit and after do not change how many rows pass."""
    flag = params.text("count")
    if flag is None or flag in ("false", "0"):
        return None
    if flag not in ("true", "1"):
        raise HttpError(ErrorCode.INVALID, f"query parameter count must be true or false, not {flag[:20]!r}")
    try:
        where = None if params.text("where") is None else parse_where(params.text("where") or "")
    except QueryError as exc:
        raise HttpError(ErrorCode.INVALID, exc.message) from None
    body: dict[str, object] = msgspec.to_builtins(CountQuery(where=where))
    return body


def _frame(event: str, data: object, version: int | None = None) -> bytes:
    head = b"" if version is None else b"id: %d\n" % version
    return head + b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


async def live_view(api: HttpApi, receive: Receive, send: Send, view: str, params: Params) -> None:
    """Serve one live query until the client goes, the gateway stops, or the client must resync."""
    try:
        where = None if params.text("where") is None else parse_where(params.text("where") or "")
    except QueryError as exc:
        raise HttpError(ErrorCode.INVALID, exc.message) from None
    subject = f"{api.prefix}.view.{view}"
    sub = await api.nc.subscribe(f"{subject}.changes", pending_msgs_limit=BUFFER)
    try:
        query = msgspec.json.encode(Query(where=where, limit=MAX_LIMIT))
        try:
            msg = await api.nc.request(f"{subject}.query", query, timeout=api.timeout)
        except (NoRespondersError, NatsTimeoutError, NatsError):
            raise HttpError(ErrorCode.UNAVAILABLE, f"no answer on {subject}.query; retry") from None
        answer = msgspec.json.decode(msg.data, type=_Answer)
        if not answer.ok or answer.result is None:
            error = answer.error or {}
            raise CommandError(str(error.get("code", "internal")), str(error.get("message", "")))
        if answer.result.next is not None:
            raise HttpError(ErrorCode.INVALID, f"a live query follows at most {MAX_LIMIT} rows: narrow its where")
        result = {k: bytes(v) for k, v in answer.result.rows}
        version = answer.result.version
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        snapshot = {"rows": [[k, msgspec.Raw(v)] for k, v in answer.result.rows], "version": version}
        await send({"type": "http.response.body", "body": _frame("snapshot", snapshot, version), "more_body": True})
        async with anyio.create_task_group() as tg:
            end_with_client_or_gateway(tg, receive, api.closing)
            while True:
                try:
                    note = msgspec.json.decode((await sub.next_msg(timeout=HEARTBEAT_S)).data, type=_Notice)
                except NatsTimeoutError:
                    await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                    continue
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # not a change notice
                if note.version <= version:
                    continue
                if note.version != version + 1:
                    reason = {"reason": f"changes {version + 1}..{note.version - 1} were lost: query again"}
                    await send({"type": "http.response.body", "body": _frame("resync", reason), "more_body": True})
                    break
                version = note.version
                writes = {k: None if bytes(v) == b"null" else bytes(v) for k, v in note.rows.items()}
                body = b"".join(
                    _frame(c.kind, {"key": c.key, "row": c.row}, version)
                    for c in diff(where, Batch(version, writes, note.reset), result, msgspec.Raw)
                )
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        with anyio.CancelScope(shield=True):
            await sub.unsubscribe()
