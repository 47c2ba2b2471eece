"""The OpenAPI parameters and answer of a view query (`GET /views/{view}?where=…`), typed.

Only a view that declares fields (`indexes=`) takes them, and `where` and `order_by` carry a
pattern of its declared fields and their value kinds (the plain and/or form; parentheses are
accepted too), so a generated request is one the view answers.
"""

from __future__ import annotations

import re
from typing import Any

from ....model.app import App
from .asyncapi import JSON

_STR = r'"[^"\\\x00-\x1f]*"'
_NUM = r"-?(0|[1-9][0-9]{0,8})"
_VALUES = {"text": _STR, "number": _NUM, "bool": "(true|false)"}

_WHERE = (
    "rows passing a where-expression over the view's declared fields: field = != < <= > >= value,"
    ' field in (v, …), field prefix "text", field is [not] null, joined by and / or, (grouped);'
    ' values are JSON ("text", 10, true). A field the view does not declare is refused (invalid)'
)

_LIVE = (
    " With `live=1` (and `where`) the rows passing `where` are followed as Server-Sent Events instead:"
    " `snapshot` (id: the view's version), then `added`, `changed`, `removed`; `resync` when changes were lost."
)


def _term(name: str, kind: str) -> str:
    value = _VALUES[kind]
    alts = [f"{name} (=|!=|<|<=|>|>=) {value}", f"{name} in \\({value}(, {value})*\\)", f"{name} is (not )?null"]
    if kind == "text":
        alts.append(f"{name} prefix {_STR}")
    return "(" + "|".join(alts) + ")"


def view_query_params(app: App, view_name: str) -> list[JSON]:
    """The query parameters of one view: none when it declares no fields."""
    view: Any = next((v for v in app.views if v.name == view_name), None)
    fields = getattr(view, "query_fields", {}) if view is not None else {}
    if not fields:
        return []
    term = "(" + "|".join(_term(re.escape(n), f.kind) for n, f in sorted(fields.items())) + ")"
    names = "(" + "|".join(re.escape(n) for n in sorted(fields)) + ")"
    order = f"{names}( (asc|desc))?"
    params = [dict(p, schema=dict(p["schema"])) for p in _PARAMS]
    params[0]["schema"]["pattern"] = f"^{term}( (and|or) {term})*$"
    params[1]["schema"]["pattern"] = f"^{order}(, {order})*$"
    return params


_PARAMS: list[JSON] = [
    {
        "name": "where",
        "in": "query",
        "required": False,
        "description": _WHERE + "." + _LIVE,
        "schema": {"type": "string"},
        "example": 'posts >= 2 and author prefix "a"',
    },
    {
        "name": "order_by",
        "in": "query",
        "required": False,
        "description": "declared fields, comma-separated, each maybe followed by asc or desc (the key breaks ties)",
        "schema": {"type": "string"},
        "example": "posts desc, author",
    },
    {
        "name": "page",
        "in": "query",
        "required": False,
        "description": "the `next` token of the previous page of the same query",
        "schema": {"type": "string"},
    },
]


def view_page(pairs: JSON) -> JSON:
    """A page of a query: its rows, the next page's token, the view's version it was read at."""
    return {
        "type": "object",
        "required": ["rows", "next", "version"],
        "properties": {
            "rows": pairs,
            "next": {"type": ["string", "null"], "description": "the token of the next page; null on the last"},
            "version": {"type": "integer", "minimum": 0, "description": "one more per batch the view committed"},
        },
    }
