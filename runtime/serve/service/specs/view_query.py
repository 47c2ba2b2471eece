"""The OpenAPI parameters and answer of a view query (`GET /views/{view}?where=…`), typed."""

from __future__ import annotations

from .asyncapi import JSON

_WHERE = (
    "rows passing a where-expression over the view's declared fields: field = != < <= > >= value,"
    ' field in (v, …), field prefix "text", field is [not] null, joined by and / or, (grouped);'
    ' values are JSON ("text", 10, true). A field the view does not declare is refused (invalid)'
)

_LIVE = (
    " With `live=1` (and `where`) the rows passing `where` are followed as Server-Sent Events instead:"
    " `snapshot` (id: the view's version), then `added`, `changed`, `removed`; `resync` when changes were lost."
)

VIEW_QUERY_PARAMS: list[JSON] = [
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
