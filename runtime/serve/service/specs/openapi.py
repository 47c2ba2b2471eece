"""The OpenAPI 3.1 document of the HTTP API, from the same schemas as `memoir schema` (`serve.schema`).

It says what the gateway does, no more and no less (a Schemathesis run with every check holds
the two together): each operation lists exactly the statuses it can answer, an entity id's
pattern is the server's own test (`str.isprintable`, to the code point), a command's body is
required when its arguments are, and argument constraints come from the types (`Meta(gt=0)`).
Built in phases: one function per kind of operation, `openapi` puts them together.
"""

from __future__ import annotations

import functools
from typing import Any

from ....model.app import App
from ....wire.protocol import MAX_HEADER_ID, MAX_ID_LENGTH
from ..http.status import STATUS
from .asyncapi import JSON, CommandSchema, Schemas
from .view_query import view_page, view_query_params

_GUARD = ["invalid", "unauthorized", "forbidden"]  # every operation: bad input, no credential, foreign origin
ERROR_RESPONSES = {  # per kind of operation: the codes it can answer besides 200 (and 500)
    "command": [
        *_GUARD,
        *("request_timeout", "conflict", "forgotten", "too_large", "unsupported_media_type", "rejected"),
        *("overloaded", "timeout"),
    ],
    "state": [*_GUARD, "not_found", "forgotten", "unavailable"],
    "history": [*_GUARD, "forgotten", "unavailable"],
    "tail": [*_GUARD, "unavailable"],
    "view": [*_GUARD, "unavailable"],
    "row": [*_GUARD, "not_found", "unavailable"],
}
_WHY = {
    400: "invalid: the message names what was wrong",
    401: "unauthorized: no or a bad bearer credential",
    403: "forbidden: an access rule said no, or the request came from a web page of another origin",
    404: "not found: no such event seq, or no such row",
    408: "the body did not arrive in time; the connection is closed",
    409: "conflict: another writer came first; retry with the same Idempotency-Key",
    410: "forgotten: the entity's data key was destroyed",
    413: "the body is over 1 MiB",
    415: "the body is not application/json",
    422: "rejected: the entity refused the command, or the Idempotency-Key was used for another request",
    500: "internal: a handler raised; nothing was stored",
    503: "overloaded or unavailable: retry after Retry-After seconds with the same Idempotency-Key",
    504: "no reply in time: retry with the same Idempotency-Key (it may have run)",
}


@functools.cache
def printable_pattern() -> str:
    """A regex character class of exactly the characters `str.isprintable` admits (this Python's Unicode).

    Ranges are written with their end characters themselves (every one is printable), so the
    pattern reads the same to Python's `re` and to ECMA-262 with the `u` flag.
    """
    ranges, start = [], None
    for code in range(0x110000):
        if chr(code).isprintable():
            start = code if start is None else start
        elif start is not None:
            ranges.append((start, code - 1))
            start = None
    if start is not None:
        ranges.append((start, 0x10FFFF))

    def char(code: int) -> str:
        c = chr(code)
        return "\\" + c if c in "\\]^-[" else c

    return "[" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges) + "]"


def _components(s: Schemas) -> JSON:
    components: dict[str, Any] = dict(s.components)
    components["ErrorReply"] = s.error_reply()
    components["EntityId"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_LENGTH,
        "pattern": f"^{printable_pattern()}+$",
        "description": "any printable text (no control, format or separator characters but the space),"
        " percent-encoded in the path",
    }
    return components


# -- parameters and responses ---------------------------------------------------------------------------


def _id_param() -> JSON:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "the entity id",
        "schema": {"$ref": "#/components/schemas/EntityId"},
    }


def _int_param(name: str, description: str, low: int, high: int = 2**63 - 1) -> JSON:
    schema: JSON = {"type": "integer", "minimum": low, "maximum": high}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _header_param(name: str, description: str, pattern: str) -> JSON:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def _json(schema: JSON, description: str) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(result: JSON) -> JSON:
    return {"type": "object", "properties": {"ok": {"const": True}, "result": result}, "required": ["ok", "result"]}


def _responses(kind: str, ok: JSON) -> JSON:
    statuses = sorted({STATUS[code] for code in ERROR_RESPONSES[kind]} | {500})
    errors = {str(s): _json({"$ref": "#/components/schemas/ErrorReply"}, _WHY[s]) for s in statuses}
    return {"200": ok} | errors


def _event_record(payload: JSON) -> JSON:
    text, opt = {"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "null"}]}
    integer = {"type": "integer"}
    props = {
        "entity_type": text,
        "entity_id": text,
        "seq": integer,
        "position": integer,
        "event": text,
        "version": integer,
        "recorded_at": {"type": "string", "format": "date-time"},
        "command_id": opt,
        "correlation_id": opt,
        "causation_id": opt,
        "principal": opt,
        "payload": payload,
    }
    extra = {"forgotten": {"type": "boolean"}, "error": {"type": "string"}}
    return {"type": "object", "properties": props | extra, "required": list(props)}


# -- the operations, one function each ------------------------------------------------------------------


def _command(s: Schemas, cmd: CommandSchema) -> JSON:
    args = s.components.get(cmd.args.get("$ref", "").rsplit("/", 1)[-1], {})
    key = "the command id: a repeat gets the first reply and stores nothing; another request with it is 422"
    return {
        "operationId": f"{cmd.entity_type}.{cmd.name}",
        "summary": cmd.doc or f"{cmd.entity_type} {cmd.name}",
        "tags": [cmd.entity_type],
        "parameters": [
            _id_param(),
            # printable ASCII, no blank at either end (HTTP trims them), at most MAX_HEADER_ID
            _header_param("Idempotency-Key", key, f"^[!-~]([ -~]{{0,{MAX_HEADER_ID - 2}}}[!-~])?$"),
        ],
        # an empty body is `{}`: required only when some argument is
        "requestBody": {"required": bool(args.get("required")), "content": {"application/json": {"schema": cmd.args}}},
        "responses": _responses("command", _json(s.ok_reply(cmd.result), "done: its result and the entity's seq")),
    }


def _state(s: Schemas, entity_type: str) -> JSON:
    at: JSON = {"name": "at", "in": "query", "required": False, "schema": {"type": "string", "format": "date-time"}}
    at["description"] = "the state as of this recorded time (RFC 3339, with a timezone)"
    return {
        "operationId": f"{entity_type}.state",
        "summary": f"a {entity_type}'s state now, after event seq, as of a recorded time, or both (the earlier)",
        "tags": [entity_type],
        "parameters": [
            _id_param(),
            _int_param("seq", "the state right after this event (404 if there is no such event)", 0),
            {
                "name": "at",
                "in": "query",
                "required": False,
                "description": at,
                "schema": {"type": "string", "format": "date-time"},
            },
        ],
        "responses": _responses("state", _json(s.ok_reply(s.states[entity_type]), "the state and its seq")),
    }


def _record(s: Schemas, entity_type: str) -> JSON:
    events = s.events.get(entity_type, [])
    return _event_record({"anyOf": [*(e.payload for e in events), {"type": "null"}]} if events else {})


def _history(s: Schemas, entity_type: str) -> JSON:
    record = _record(s, entity_type)
    return {
        "operationId": f"{entity_type}.history",
        "summary": f"a {entity_type}'s events in seq order",
        "tags": [entity_type],
        "parameters": [
            _id_param(),
            _int_param("from_seq", "the first seq to return", 1),
            _int_param("limit", "at most this many", 1, 1000),
        ],
        "responses": _responses("history", _json(_ok({"type": "array", "items": record}), "the events")),
    }


def _tail(s: Schemas, entity_type: str) -> JSON:
    """The stream, as SSE parsers read it: a list of events, each `data` one event record as JSON."""
    frame = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the stream sequence"},
            "event": {"type": "string", "description": "the event's name"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _record(s, entity_type),
                "description": "the event as in /{type}/{id}/events",
            },
        },
        "required": ["id", "event", "data"],
    }
    stream = {
        "description": "Server-Sent Events, one per event, with comment lines as heartbeats; it ends when"
        " the client goes or the server stops",
        "content": {"text/event-stream": {"schema": {"type": "array", "items": frame}}},
    }
    return {
        "operationId": f"{entity_type}.tail",
        "summary": f"every new {entity_type} event as Server-Sent Events (id: stream sequence; event: name)",
        "tags": [entity_type],
        "parameters": [
            _int_param("after", "replay from after this stream sequence (0: the whole stream)", 0),
            _header_param("Last-Event-ID", "resume after this stream sequence (wins over `after`)", "^[0-9]{1,18}$"),
        ],
        "responses": _responses("tail", stream),
    }


def _view_row(view_name: str, row: JSON) -> JSON:
    key = {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    return {
        "operationId": f"views.{view_name}.get",
        "summary": f"one row of view {view_name}",
        "tags": ["views"],
        "parameters": [key],
        "responses": _responses("row", _json(_ok(row), "the row")),
    }


def _view_scan(view_name: str, row: JSON, query_params: list[JSON]) -> JSON:
    # a [key, row] pair; said without prefixItems, which some OpenAPI tools still read as draft-4 tuples
    pair = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"anyOf": [{"type": "string"}, row]}}
    pairs = {"type": "array", "items": pair}
    answers: list[JSON] = [pairs, view_page(pairs)]
    counting: list[JSON] = []
    if query_params:  # a view queried by declared fields also counts the rows passing a where
        answers.append({"type": "integer", "minimum": 0, "description": "with count=true: how many rows pass"})
        counting.append(_COUNT)
    return {
        "operationId": f"views.{view_name}.scan",
        "summary": f"rows of view {view_name} in key order, or a query by its declared fields",
        "tags": ["views"],
        "parameters": [
            {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
            _int_param("limit", "at most this many rows", 1, 10_000),
            *query_params,
            *counting,
        ],
        "responses": _responses(
            "view",
            _json(
                _ok({"anyOf": answers}),
                "[key, row] pairs; with where, order_by or page: a page; with count=true: a count",
            ),
        ),
    }


_COUNT: JSON = {
    "name": "count",
    "in": "query",
    "required": False,
    "description": "true: answer how many rows pass `where` (all rows without it) instead of the rows"
    " (order_by, page, limit and after do not change a count)",
    "schema": {"type": "boolean"},
}


def _paths(s: Schemas) -> JSON:
    paths: JSON = {}
    for entity_type in s.entity_types:
        for cmd in s.commands.get(entity_type, []):
            paths[f"/{entity_type}/{{id}}/{cmd.name}"] = {"post": _command(s, cmd)}
        paths[f"/{entity_type}/{{id}}"] = {"get": _state(s, entity_type)}
        history = {"get": _history(s, entity_type)}
        paths[f"/{entity_type}/{{id}}/events"] = paths.get(f"/{entity_type}/{{id}}/events", {}) | history
        paths[f"/events/{entity_type}"] = {"get": _tail(s, entity_type)}
    for view in s.views:
        paths[f"/views/{view.name}/{{key}}"] = {"get": _view_row(view.name, view.row)}
        paths[f"/views/{view.name}"] = {"get": _view_scan(view.name, view.row, view_query_params(s.app, view.name))}
    return paths


def openapi(app: App, *, version: str = "0.1.0", secured: bool = True) -> JSON:
    """The document: paths for each command, entity reads, live tails and views.

    `secured`: every operation needs `Authorization: Bearer …` (the data dir's token or a JWT);
    False only for a gateway started insecure.
    """
    s = Schemas(app)
    doc: JSON = {
        "openapi": "3.1.0",
        "info": {
            "title": f"{app.name} (Memoir)",
            "version": version,
            "description": "The commands, reads and event streams of a Memoir app over HTTP; the same"
            " protocol as on NATS (see `memoir schema`). Requests from a browser page are refused unless"
            " its origin is configured.",
        },
        "paths": _paths(s),
        "components": {"schemas": _components(s)},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
