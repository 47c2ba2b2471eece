"""Server-rendered HTML: a page frame and tables, every value escaped on its way in.

No template engine: pages are small Python functions over these helpers, so escaping is not
a choice a template can forget (`esc` on every value, `Html` marks what is already markup).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

import msgspec

NAV = (
    ("Entities", "/ui/entity"),
    ("Views", "/ui/views"),
    ("Workflows", "/ui/workflows"),
    ("Dead letters", "/ui/deadletters"),
    ("Cluster", "/ui/cluster"),
    ("Metrics", "/ui/metrics"),
)


CURRENT = ' aria-current="page"'


class Html(str):
    """Markup that is safe as it is (built here from escaped parts)."""


def esc(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def url(path: str, **params: Any) -> str:
    shown = {k: v for k, v in params.items() if v is not None and v != ""}
    return path + ("?" + urlencode(shown) if shown else "")


def link(text: Any, href: str, **attrs: str) -> Html:
    extra = "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
    return Html(f'<a href="{esc(href)}"{extra}>{esc(text)}</a>')


def as_json(value: Any) -> str:
    """A state or payload as compact JSON text (what a table cell shows)."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def builtins(value: Any) -> Any:
    try:
        return msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, caption: str, row_attrs: Sequence[str] = ()
) -> Html:
    """A table with a caption (what a screen reader announces) and column headers."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        attrs = row_attrs[i] if i < len(row_attrs) else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    return Html(
        f'<div class="scroll"><table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def fields(value: Any, *, caption: str) -> Html:
    """A state as a two-column table (a struct's fields), or as JSON when it is not a mapping."""
    data = builtins(value)
    if isinstance(data, dict):
        return table(
            ["field", "value"], [(k, v if isinstance(v, str) else as_json(v)) for k, v in data.items()], caption=caption
        )
    return Html(f"<p>{esc(caption)}</p><pre>{esc(as_json(data))}</pre>")


def notice(text: str, *, error: bool = False) -> Html:
    role = "alert" if error else "status"
    return Html(f'<p class="{"error" if error else "notice"}" role="{role}">{esc(text)}</p>')


def page(title: str, body: str, *, current: str = "") -> bytes:
    nav = "".join(f'<li><a href="{href}"{CURRENT if href == current else ""}>{name}</a></li>' for name, href in NAV)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · Memoir console</title>"
        '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/ui/static/console.css">'
        '<script src="/ui/static/console.js" defer></script></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        f'<header><a class="brand" href="/ui">Memoir</a><nav aria-label="Console"><ul>{nav}</ul></nav>'
        '<form method="post" action="/ui/logout"><button type="submit">Log out</button></form></header>'
        f'<main id="main"><h1>{esc(title)}</h1>{body}</main></body></html>'
    ).encode()
