"""`memoir schema`: the AsyncAPI document is valid AsyncAPI 3.0 and its schemas say what the runtime accepts.

The official AsyncAPI 3.0.0 JSON Schema is vendored in tests/fixtures (from the `@asyncapi/specs`
package, Apache-2.0, its LICENSE beside it). Messages from a running service are checked against
the generated schemas in tests/serve/process/test_http.py.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from entities import app
from entities.inventory import Received
from runtime.serve.cli.main import main
from runtime.serve.process.appspec import load_app
from runtime.serve.service.specs.asyncapi import asyncapi, event_json_schemas

SPEC = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "asyncapi-3.0.0.json").read_text())


def component(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator for `schema` whose `#/components/schemas/…` references resolve in `doc`."""
    root = {**schema, "components": {"schemas": doc["components"]["schemas"]}}
    cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator)
    return cls(root, format_checker=jsonschema.FormatChecker())


def test_the_document_is_valid_asyncapi_3() -> None:
    doc = json.loads(msgspec.json.encode(asyncapi(app)))
    validator = jsonschema.Draft7Validator(SPEC)
    assert list(validator.iter_errors(doc)) == []
    broken = copy.deepcopy(doc)
    broken["operations"]["inventory.receive"]["action"] = "reply"  # only send and receive exist
    assert list(validator.iter_errors(broken)), "the vendored AsyncAPI schema must catch a bad document"


def test_an_app_with_workflows_and_timers_is_described_too() -> None:
    """A workflow's state holds raw JSON msgspec cannot describe: it is any JSON, the rest is exact."""
    doc = json.loads(msgspec.json.encode(asyncapi(load_app("entities:sagas"))))
    assert list(jsonschema.Draft7Validator(SPEC).iter_errors(doc)) == []
    assert "transfer.get.reply" in doc["components"]["messages"]


def test_every_command_and_event_is_described() -> None:
    doc = asyncapi(app, prefix="acme")
    ops = doc["operations"]
    assert ops["inventory.receive"]["action"] == "receive"
    assert doc["channels"]["cmd.inventory.receive"]["address"] == "acme.cmd.inventory.{id}.receive"
    assert doc["channels"]["events.inventory"]["address"] == "acme.events.inventory.{id}"
    assert set(doc["channels"]["events.inventory"]["messages"]) == {
        *("Opened", "Received", "Sold", "Adjusted"),
        *("memoir.TimerScheduled", "memoir.TimerCancelled"),  # on the stream of an entity that sets timers
    }
    headers = doc["components"]["messages"]["inventory.Received"]["headers"]
    assert headers["properties"]["Memoir-Event"] == {"const": "Received"}
    assert {"Nats-Msg-Id", "Memoir-Seq"} <= set(headers["required"])
    # shared types are one component each: the state is referenced, not repeated
    get_reply = doc["components"]["messages"]["inventory.get.reply"]["payload"]
    assert get_reply["properties"]["result"] == {"$ref": "#/components/schemas/Stock"}


def test_command_schemas_accept_what_the_runtime_accepts() -> None:
    doc = asyncapi(app)
    args = component(doc, doc["components"]["messages"]["inventory.receive"]["payload"])
    assert args.is_valid({"units": 5, "on": "2022-03-01"})
    assert not args.is_valid({"units": "5", "on": "2022-03-01"})  # the runtime answers invalid too
    assert not args.is_valid({"units": 5})  # `on` is required
    assert not args.is_valid({"units": 5, "on": "2022-03-01", "extra": 1})  # unknown fields are refused
    reply = component(doc, doc["components"]["messages"]["inventory.receive.reply"]["payload"])
    assert reply.is_valid({"ok": True, "result": 105, "seq": 2})
    assert not reply.is_valid({"ok": True, "result": "105", "seq": 2})
    error = component(doc, doc["components"]["messages"]["error"]["payload"])
    assert error.is_valid({"ok": False, "error": {"code": "invalid", "message": "…"}})
    assert not error.is_valid({"ok": False, "error": {"message": "no code"}})


def test_json_schema_per_event_type() -> None:
    schemas = event_json_schemas(app)
    assert {"inventory.Received", "post.Published", "profile.Registered", "memoir.TimerScheduled"} <= set(schemas)
    received = jsonschema.Draft202012Validator(schemas["inventory.Received"], format_checker=jsonschema.FormatChecker())
    assert received.is_valid(json.loads(msgspec.json.encode(Received(5, date(2022, 3, 1)))))
    assert not received.is_valid({"units": 5, "on": "the first of March"})


@pytest.mark.parametrize("fmt", ["asyncapi", "jsonschema"])
def test_memoir_schema_prints_json(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--format", fmt]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert ("asyncapi" in doc) == (fmt == "asyncapi")
