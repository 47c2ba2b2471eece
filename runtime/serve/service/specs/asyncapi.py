"""JSON Schemas of an app's messages, from the same msgspec types the runtime decodes with.

One generator, several documents: the AsyncAPI document of the NATS protocol (`memoir schema`),
the OpenAPI document of the HTTP gateway (`/openapi.json`) and the JSON Schema of each event
type (`memoir schema --format jsonschema`) all read `Schemas`. A command's arguments are the
validation Struct the model compiles from the handler's signature, its result the `R` of its
`Effect[R]` annotation, an event's payload its Struct; shared types (a state, a nested Struct)
are one component each, referenced where used, so a client generator makes one class of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from ....model.app import App
from ....model.entity import model_of
from ....model.events import spec_of
from ....model.timer_events import CANCELLED, SCHEDULED, TimerCancelled, TimerScheduled
from ....wire.protocol import (
    H_CAUSATION_ID,
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_EVENT,
    H_MSG_ID,
    H_POSITION,
    H_RECORDED,
    H_SEQ,
    H_TIMEOUT,
    H_TRACEPARENT,
    H_VERSION,
    MAX_HEADER_ID,
    MAX_ID_LENGTH,
    ErrorBody,
    stream_name,
)

JSON = dict[str, Any]

ERROR_CODES = (
    "invalid",
    "rejected",
    "unknown_command",
    "unknown_entity_type",
    "conflict",
    "overloaded",
    "unavailable",
    "unauthorized",
    "forbidden",
    "internal",
)


@dataclass(frozen=True)
class CommandSchema:
    entity_type: str
    name: str
    args: JSON  # a $ref to the arguments' component
    result: JSON  # the result's schema ({} when the handler does not say)
    doc: str


@dataclass(frozen=True)
class EventSchema:
    entity_type: str
    name: str  # the stored name (`Memoir-Event`)
    version: int
    payload: JSON
    cls: type[msgspec.Struct]


@dataclass(frozen=True)
class ViewSchema:
    name: str
    row: JSON


class Schemas:
    """Every message of an app as JSON Schema; `components` holds the named types the others reference."""

    def __init__(self, app: App, ref_template: str = "#/components/schemas/{name}") -> None:
        self.app = app
        self.ref_template = ref_template
        types: list[Any] = []
        plan: list[tuple[str, Any]] = []  # what each generated schema is for, in order
        for cls in app.entities:
            model = model_of(cls)
            for spec in sorted(model.commands.values(), key=lambda s: s.name):
                types += [spec.args_type, spec.reply_type]
                plan += [("args", (model.type_name, spec)), ("result", None)]
            for ev in sorted(model.codec.classes, key=lambda c: spec_of(c).name):
                types.append(ev)
                plan.append(("event", (model.type_name, ev)))
            types.append(model.state_type)
            plan.append(("state", model.type_name))
        for system in ((SCHEDULED, TimerScheduled), (CANCELLED, TimerCancelled)):  # any entity that sets timers
            types.append(system[1])
            plan.append(("system", system))
        for view in app.views:
            types.append(view.row_type)
            plan.append(("view", view.name))
        types.append(ErrorBody)
        plan.append(("error", None))
        types = [_describable(t) for t in types]
        schemas, self.components = msgspec.json.schema_components(types, ref_template=ref_template)
        self.commands: dict[str, list[CommandSchema]] = {}
        self.events: dict[str, list[EventSchema]] = {}
        self.states: dict[str, JSON] = {}
        self.views: list[ViewSchema] = []
        self.system_events: list[EventSchema] = []
        pending: tuple[str, Any, JSON] | None = None
        for (kind, what), schema in zip(plan, schemas, strict=True):
            if kind == "args":
                pending = (*what, schema)
            elif kind == "result":
                assert pending is not None
                entity_type, spec, args = pending
                doc = (spec.handler.__doc__ or "").strip()
                self.commands.setdefault(entity_type, []).append(
                    CommandSchema(entity_type, spec.name, args, schema, doc)
                )
            elif kind == "event":
                entity_type, ev = what
                es = spec_of(ev)
                self.events.setdefault(entity_type, []).append(
                    EventSchema(entity_type, es.name, es.version, schema, ev)
                )
            elif kind == "state":
                self.states[what] = schema
            elif kind == "system":
                self.system_events.append(EventSchema("*", what[0], 1, schema, what[1]))
            elif kind == "view":
                self.views.append(ViewSchema(what, schema))
            else:
                self.error_body = schema
        self.entity_types = [model_of(cls).type_name for cls in self.app.entities]

    def ref(self, name: str) -> JSON:
        return {"$ref": self.ref_template.format(name=name)}

    # -- the reply envelope --------------------------------------------------------------------

    def ok_reply(self, result: JSON) -> JSON:
        """`{"ok": true, "result": …, "seq": n}` (and `"duplicate": true` for a repeated command id)."""
        return {
            "type": "object",
            "properties": {
                "ok": {"const": True},
                "result": result,
                "seq": {"type": "integer", "minimum": 0, "description": "the entity's seq after the command"},
                "duplicate": {"type": "boolean", "description": "a repeated command id: this is the first reply"},
            },
            "required": ["ok", "result"],
        }

    def error_reply(self) -> JSON:
        """`{"ok": false, "error": {"code", "message", "details"}}`."""
        return {
            "type": "object",
            "properties": {"ok": {"const": False}, "error": self.error_body},
            "required": ["ok", "error"],
            "description": "codes: " + ", ".join(ERROR_CODES) + " (clients treat unknown codes as errors)",
        }


def _describable(tp: Any) -> Any:
    """`tp`, or a type msgspec can write a JSON Schema for that decodes the same JSON.

    msgspec cannot write a `msgspec.Raw` default (a workflow's state, a timer's arguments): such a
    Struct is described by a twin whose Raw defaults are decoded. Whatever still cannot be described
    is any JSON, rather than failing the whole document.
    """
    if _schema_ok(tp):
        return tp
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        cfg = tp.__struct_config__
        fields: list[tuple[Any, ...]] = []
        for f in msgspec.structs.fields(tp):
            if f.default is not msgspec.NODEFAULT:
                default = msgspec.json.decode(f.default) if isinstance(f.default, msgspec.Raw) else f.default
                fields.append((f.name, f.type, default))
            elif f.default_factory is not msgspec.NODEFAULT:
                fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
            else:
                fields.append((f.name, f.type))
        twin = msgspec.defstruct(
            tp.__name__,
            fields,
            kw_only=True,
            forbid_unknown_fields=cfg.forbid_unknown_fields,
            rename={f.name: f.encode_name for f in msgspec.structs.fields(tp)},
            module=tp.__module__,
        )
        if _schema_ok(twin):
            return twin
    return Any


def _schema_ok(tp: Any) -> bool:
    try:
        msgspec.json.schema(tp)
    except (TypeError, ValueError):
        return False
    return True


def _str(description: str, **extra: Any) -> JSON:
    return {"type": "string", "description": description, **extra}


def command_headers_schema() -> JSON:
    return {
        "type": "object",
        "properties": {
            H_COMMAND_ID: _str("idempotency key: a repeat gets the first reply", maxLength=MAX_HEADER_ID),
            H_CORRELATION_ID: _str("recorded with the events", maxLength=MAX_HEADER_ID),
            H_TRACEPARENT: _str("W3C trace context; its trace id becomes the correlation id"),
            H_TIMEOUT: _str("milliseconds the sender waits (1-86400000)", pattern="^[0-9]+$"),
            "Authorization": _str("a bearer token, where the runtime checks access"),
        },
    }


def event_headers_schema(event: EventSchema) -> JSON:
    digits = {"pattern": "^[0-9]+$"}
    return {
        "type": "object",
        "properties": {
            H_MSG_ID: _str(
                "{type}/{id}/{seq} (id percent-encoded), or {type}/{id}/cmd:{command id} on the JetStream journal"
            ),
            H_EVENT: {"const": event.name},
            H_VERSION: {"const": str(event.version)},
            H_SEQ: _str("the event's seq within its entity", **digits),
            H_POSITION: _str(
                "the event's position in the journal (absent in the JetStream journal's own stream,"
                " whose stream sequence is the position)",
                **digits,
            ),
            H_RECORDED: _str("recorded time, unix nanoseconds", **digits),
            H_COMMAND_ID: _str("the command's id, percent-encoded"),
            H_CORRELATION_ID: _str("percent-encoded"),
            H_CAUSATION_ID: _str("percent-encoded"),
        },
        "required": [H_MSG_ID, H_EVENT, H_SEQ],
    }


# -- AsyncAPI 3.0: the NATS protocol ------------------------------------------------------------------


def _id_parameter() -> JSON:
    return {
        "description": f"the entity id (1-{MAX_ID_LENGTH} printable characters), percent-encoded into one subject"
        " token: every character outside A-Z a-z 0-9 - _ ~ : @ ! $ & ' ( ) + , ; = (the dot too)"
    }


def asyncapi(app: App, *, prefix: str = "memoir", version: str = "0.1.0") -> JSON:
    """The AsyncAPI 3.0 document of an app's NATS protocol, from the runtime's point of view.

    Each command is a `receive` operation on its subject with a reply (ok or error envelope) on the
    requester's inbox; each entity type's events are one `send` operation on its event subject.
    """
    s = Schemas(app)
    doc = _Document.with_replies(s)
    for entity_type in s.entity_types:
        for cmd in s.commands.get(entity_type, []):
            doc.add_command(s, entity_type, cmd, prefix)
        doc.add_events(s, entity_type, prefix)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{app.name} (Memoir)",
            "version": version,
            "description": "Commands are NATS requests answered by the runtime; events are published to JetStream.",
        },
        "defaultContentType": "application/json",
        "channels": doc.channels,
        "operations": doc.operations,
        "components": {"schemas": s.components, "messages": doc.messages},
    }


@dataclass
class _Document:
    """The AsyncAPI document's three maps, filled in phases: the reply channel, then each entity
    type's commands and events (in that order, so the document reads the same every time)."""

    channels: JSON
    operations: JSON
    messages: JSON

    @classmethod
    def with_replies(cls, s: Schemas) -> _Document:
        """The error message and the requester's reply channel, which every command's reply joins."""
        error = {"name": "error", "title": "an error reply", "contentType": "application/json"}
        reply = {
            "address": None,
            "description": "the requester's reply subject (a NATS inbox)",
            "messages": {"error": {"$ref": "#/components/messages/error"}},
        }
        return cls(channels={"reply": reply}, operations={}, messages={"error": {**error, "payload": s.error_reply()}})

    def add_command(self, s: Schemas, entity_type: str, cmd: CommandSchema, prefix: str) -> None:
        """A command: its arguments and ok reply, its subject, and the `receive` operation answering it."""
        key = f"{entity_type}.{cmd.name}"
        self.messages[key] = {
            "name": key,
            "title": f"{entity_type} {cmd.name}",
            "summary": cmd.doc or f"the arguments of {entity_type}.{cmd.name}",
            "contentType": "application/json",
            "headers": command_headers_schema(),
            "payload": cmd.args,
        }
        self.messages[f"{key}.reply"] = {
            "name": f"{key}.reply",
            "title": f"{entity_type} {cmd.name}: ok",
            "contentType": "application/json",
            "payload": s.ok_reply(cmd.result),
        }
        self.channels["reply"]["messages"][f"{key}.reply"] = {"$ref": f"#/components/messages/{key}.reply"}
        self.channels[f"cmd.{key}"] = {
            "address": f"{prefix}.cmd.{entity_type}.{{id}}.{cmd.name}",
            "title": f"{entity_type} {cmd.name}",
            "parameters": {"id": _id_parameter()},
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        self.operations[key] = {
            "action": "receive",
            "title": f"{entity_type} {cmd.name}",
            "channel": {"$ref": f"#/channels/cmd.{key}"},
            "messages": [{"$ref": f"#/channels/cmd.{key}/messages/{key}"}],
            "reply": {
                "channel": {"$ref": "#/channels/reply"},
                "messages": [
                    {"$ref": f"#/channels/reply/messages/{key}.reply"},
                    {"$ref": "#/channels/reply/messages/error"},
                ],
            },
        }

    def add_events(self, s: Schemas, entity_type: str, prefix: str) -> None:
        """An entity type's events (the runtime's timer events too): one channel, one `send` operation."""
        refs: JSON = {}
        for ev in s.events.get(entity_type, []) + s.system_events:
            key = ev.name if ev.entity_type == "*" else f"{entity_type}.{ev.name}"
            self.messages[key] = {
                "name": ev.name,
                "title": f"{entity_type} {ev.name} v{ev.version}",
                "contentType": "application/json",
                "headers": event_headers_schema(ev),
                "payload": ev.payload,
            }
            if ev.entity_type == "*":
                self.messages[key]["title"] = f"{ev.name}: the runtime's own, on entities that set timers"
            refs[ev.name] = {"$ref": f"#/components/messages/{key}"}
        self.channels[f"events.{entity_type}"] = {
            "address": f"{prefix}.events.{entity_type}.{{id}}",
            "title": f"{entity_type} events",
            "description": f"kept in the JetStream stream {stream_name(prefix, entity_type)}"
            " (with the JetStream journal: the prefix's one events stream)",
            "parameters": {"id": _id_parameter()},
            "messages": refs,
        }
        self.operations[f"{entity_type}.events"] = {
            "action": "send",
            "title": f"{entity_type} events",
            "channel": {"$ref": f"#/channels/events.{entity_type}"},
            "messages": [{"$ref": f"#/channels/events.{entity_type}/messages/{name}"} for name in refs],
        }


def event_json_schemas(app: App) -> JSON:
    """One standalone JSON Schema (2020-12) per event type, keyed `{entity type}.{event name}`
    (the runtime's timer events once, by their own names)."""
    out: JSON = {}
    s = Schemas(app)
    for ev in [e for events in s.events.values() for e in events] + s.system_events:
        key = ev.name if ev.entity_type == "*" else f"{ev.entity_type}.{ev.name}"
        out[key] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{key} v{ev.version}",
            **msgspec.json.schema(_describable(ev.cls)),
        }
    return out


def render(app: App, *, prefix: str = "memoir", fmt: str = "asyncapi") -> str:
    """`memoir schema`: the AsyncAPI document, or the event types' JSON Schemas, as JSON text."""
    doc = asyncapi(app, prefix=prefix) if fmt == "asyncapi" else event_json_schemas(app)
    return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode()
