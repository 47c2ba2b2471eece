"""The OpenAPI 3.1 document of the HTTP API, from the same schemas as `memoir schema` (`serve.schema`)."""

from __future__ import annotations

from typing import Any

from ....model.app import App
from ....wire.protocol import MAX_HEADER_ID, MAX_ID_LENGTH
from ..http.status import STATUS
from .asyncapi import JSON, Schemas

ERROR_RESPONSES = {  # per kind of route: the statuses it can answer besides 200
    "command": [
        *("invalid", "unauthorized", "forbidden", "unknown_command", "conflict", "too_large", "rejected"),
        *("forgotten", "overloaded", "timeout"),
    ],
    "read": ["invalid", "unknown_entity_type", "forgotten", "unavailable"],
    "view": ["invalid", "not_found", "unavailable"],
}
_WHY = {
    400: "invalid: the message names what was wrong",
    401: "unauthorized",
    403: "forbidden",
    404: "no such entity type, command, view or row",
    409: "conflict: another writer came first; retry with the same Idempotency-Key",
    410: "forgotten: the entity's data key was destroyed",
    413: "the body is over 1 MiB",
    422: "rejected: the entity refused the command",
    500: "internal: a handler raised; nothing was stored",
    503: "overloaded or unavailable: retry after Retry-After seconds with the same Idempotency-Key",
    504: "no reply in time: retry with the same Idempotency-Key (it may have run)",
}


def _id_param() -> JSON:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "the entity id, percent-encoded in the path",
        # `events` in this place is the type's live tail
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "not": {"const": "events"}},
    }


def _int_param(name: str, description: str, low: int, high: int | None = None) -> JSON:
    schema: JSON = {"type": "integer", "minimum": low}
    if high is not None:
        schema["maximum"] = high
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _json(schema: JSON, description: str) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(kind: str) -> JSON:
    statuses = sorted({STATUS[code] for code in ERROR_RESPONSES[kind]})
    return {str(s): _json({"$ref": "#/components/schemas/ErrorReply"}, _WHY[s]) for s in [*statuses, 500]}


def openapi(app: App, *, version: str = "0.1.0") -> JSON:
    """Paths for each command, entity reads, live tails and views; the schemas are the NATS protocol's."""
    s = Schemas(app)
    paths: JSON = {}
    for entity_type in s.entity_types:
        for cmd in s.commands.get(entity_type, []):
            paths[f"/{entity_type}/{{id}}/{cmd.name}"] = {
                "post": {
                    "operationId": f"{entity_type}.{cmd.name}",
                    "summary": cmd.doc or f"{entity_type} {cmd.name}",
                    "tags": [entity_type],
                    "parameters": [
                        _id_param(),
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "the command id: a repeat gets the first reply and stores nothing",
                            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_HEADER_ID},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": cmd.args}},
                    },
                    "responses": {"200": _json(s.ok_reply(cmd.result), "done: its result and the entity's seq")}
                    | _errors("command"),
                }
            }
        paths[f"/{entity_type}/{{id}}"] = {
            "get": {
                "operationId": f"{entity_type}.state",
                "summary": f"a {entity_type}'s state now, after event seq, or as of a recorded time",
                "tags": [entity_type],
                "parameters": [
                    _id_param(),
                    _int_param("seq", "the state right after this event", 0),
                    {
                        "name": "at",
                        "in": "query",
                        "required": False,
                        "description": "the state as of this recorded time (ISO 8601 with a timezone)",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                "responses": {"200": _json(s.ok_reply(s.states[entity_type]), "the state and its seq")}
                | _errors("read"),
            }
        }
        events = s.events.get(entity_type, [])
        record = _event_record({"anyOf": [*(e.payload for e in events), {"type": "null"}]} if events else {})
        paths[f"/{entity_type}/{{id}}/events"] = {
            "get": {
                "operationId": f"{entity_type}.history",
                "summary": f"a {entity_type}'s events in seq order",
                "tags": [entity_type],
                "parameters": [
                    _id_param(),
                    _int_param("from_seq", "the first seq to return", 1),
                    _int_param("limit", "at most this many", 1, 1000),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"ok": {"const": True}, "result": {"type": "array", "items": record}},
                            "required": ["ok", "result"],
                        },
                        "the events",
                    )
                }
                | _errors("read"),
            }
        }
        paths[f"/{entity_type}/events"] = {
            "get": {
                "operationId": f"{entity_type}.tail",
                "summary": f"every new {entity_type} event as Server-Sent Events (id: stream sequence; event: name)",
                "tags": [entity_type],
                "parameters": [
                    _int_param("after", "replay from after this stream sequence (0: the whole stream)", 0),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "resume after this stream sequence",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "a stream of events; `data:` is one event as in /{type}/{id}/events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                }
                | _errors("read"),
            }
        }
    for view in s.views:
        paths[f"/views/{view.name}/{{key}}"] = {
            "get": {
                "operationId": f"views.{view.name}.get",
                "summary": f"one row of view {view.name}",
                "tags": ["views"],
                "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ok(view.row), "the row")} | _errors("view"),
            }
        }
        paths[f"/views/{view.name}"] = {
            "get": {
                "operationId": f"views.{view.name}.scan",
                "summary": f"rows of view {view.name} in key order",
                "tags": ["views"],
                "parameters": [
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
                    _int_param("limit", "at most this many rows", 1, 10_000),
                ],
                "responses": {
                    "200": _json(
                        _ok(
                            {"type": "array", "items": {"type": "array", "prefixItems": [{"type": "string"}, view.row]}}
                        ),
                        "[key, row] pairs",
                    )
                }
                | _errors("view"),
            }
        }
    components: dict[str, Any] = dict(s.components)
    components["ErrorReply"] = s.error_reply()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{app.name} (Memoir)",
            "version": version,
            "description": "The commands, reads and event streams of a Memoir app over HTTP; the same"
            " protocol as on NATS (see `memoir schema`).",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def _ok(result: JSON) -> JSON:
    return {"type": "object", "properties": {"ok": {"const": True}, "result": result}, "required": ["ok", "result"]}


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
