"""The entity pages: look one up, page through its history with the state after each event,
travel to any seq (a row's link), and follow it live (the API's SSE tail, rendered row by row)."""

from __future__ import annotations

from .....engine.history import HistoryItem
from .....model.entity import EntityModel
from .....model.errors import CommandError, EntityForgotten
from .....wire.protocol import check_entity_id
from .html import Html, as_json, builtins, esc, fields, link, notice, url
from .parts import ConsolePart, Params
from .reading import PAGE_SIZE, history_page, state_after

HEADERS = ("seq", "event", "recorded", "payload", "state after")


def lookup_form(console: ConsolePart, entity_type: str, entity_id: str, action: str = "/ui/entity") -> Html:
    options = "".join(
        f"<option{' selected' if t == entity_type else ''}>{esc(t)}</option>" for t in sorted(console.api.models)
    )
    return Html(
        f'<form class="inline" method="get" action="{action}" role="search">'
        f'<label>Entity type<select name="type">{options}</select></label>'
        f'<label>Entity id<input name="id" value="{esc(entity_id)}" required autocomplete="off"></label>'
        '<button type="submit">Look up</button></form>'
    )


def _row(item: HistoryItem, href: str, chosen: bool) -> Html:
    env = item.envelope
    cells = (
        link(env.seq, href, aria_label=f"state at seq {env.seq}"),
        env.name,
        env.recorded.strftime("%Y-%m-%d %H:%M:%S"),
        as_json(builtins(item.event)),
        as_json(builtins(item.state)),
    )
    cls = ' class="chosen" aria-current="true"' if chosen else ""
    tds = "".join(f"<td>{esc(c)}</td>" for c in cells)
    return Html(f'<tr data-href="{esc(href)}" data-seq="{item.envelope.seq}"{cls}>{tds}</tr>')


def _pager(entity_type: str, entity_id: str, first: int, head: int) -> Html:
    parts = []
    if first > 1:
        parts.append(link("First page", url("/ui/entity", type=entity_type, id=entity_id, first=1)))
        parts.append(
            link("Previous page", url("/ui/entity", type=entity_type, id=entity_id, first=max(1, first - PAGE_SIZE)))
        )
    if first + PAGE_SIZE <= head:
        parts.append(link("Next page", url("/ui/entity", type=entity_type, id=entity_id, first=first + PAGE_SIZE)))
        last = max(1, head - (head - 1) % PAGE_SIZE)
        parts.append(link("Last page", url("/ui/entity", type=entity_type, id=entity_id, first=last)))
    shown = f"events {first} to {min(head, first + PAGE_SIZE - 1)} of {head}"
    return Html(f'<nav class="pager" aria-label="History pages"><span>{esc(shown)}</span>{"".join(parts)}</nav>')


def _live(live: str, entity_id: str, row_url: str, names: str, *, last_page: bool) -> Html:
    """Where the script follows the entity: only on the last page, where new rows belong."""
    if not last_page:
        return Html('<p id="live-status" role="status">The last page follows this entity live.</p>')
    return Html(
        f'<p id="live-status" role="status" aria-live="polite" data-live="{esc(live)}" data-id="{esc(entity_id)}"'
        f' data-row="{esc(row_url)}" data-events="{esc(names)}">Live updates start when the page has loaded.</p>'
    )


def entity_key(console: ConsolePart, params: Params) -> tuple[EntityModel, str]:
    model = console.api.model(params.text("type"))
    return model, check_entity_id(params.text("id"))


async def entity_page(console: ConsolePart, params: Params) -> tuple[str, Html]:
    entity_type, entity_id = params.text("type", ""), params.text("id", "")
    form = lookup_form(console, entity_type, entity_id)
    if not entity_type or not entity_id:
        return "Entities", Html(form + notice("Choose an entity type and an id."))
    model, entity_id = entity_key(console, params)
    journal = console.api.service.journal
    head = await journal.head(entity_type, entity_id)
    chosen = params.integer("seq")
    first = params.integer("first") or (max(1, chosen - (chosen - 1) % PAGE_SIZE) if chosen else 1)
    title = f"{entity_type} {entity_id}"
    if head == 0:
        return title, Html(form + notice(f"{entity_type} {entity_id!r} has no events."))
    try:
        items = await history_page(journal, model, entity_id, first)
        state, at = await state_after(journal, model, entity_id, chosen)
    except EntityForgotten as exc:
        return title, Html(form + notice(str(exc), error=True))
    here = {"type": entity_type, "id": entity_id, "first": first}
    rows = "".join(_row(i, url("/ui/entity", **here, seq=i.envelope.seq), i.envelope.seq == chosen) for i in items)
    head_cells = "".join(f'<th scope="col">{h}</th>' for h in HEADERS)
    which = f"State at seq {at}" + (" (time travel)" if chosen else " (now)")
    live = url("/ui/live/" + entity_type, id=entity_id)
    row_url = url("/ui/row", type=entity_type, id=entity_id)
    names = ",".join(sorted(model.replayers))
    body = (
        form
        + f'<section aria-labelledby="state-h"><h2 id="state-h">{esc(which)}</h2>'
        + fields(state, caption=which)
        + (link("Back to now", url("/ui/entity", type=entity_type, id=entity_id, first=first)) if chosen else "")
        + "</section>"
        + '<section aria-labelledby="history-h"><h2 id="history-h">History</h2>'
        + _live(live, entity_id, row_url, names, last_page=first + PAGE_SIZE > head)
        + _pager(entity_type, entity_id, first, head)
        + '<div class="scroll"><table id="history"><caption>Events with the state after each; choose a seq'
        + f" to see the state then</caption><thead><tr>{head_cells}</tr></thead><tbody>{rows}</tbody></table></div>"
        + "</section>"
    )
    return title, Html(body)


async def history_row(console: ConsolePart, params: Params) -> bytes:
    """One history row, for the live tail to append (the state after that event included)."""
    model, entity_id = entity_key(console, params)
    seq = params.integer("seq")
    if not seq:
        raise CommandError("invalid", "seq is required")
    items = await history_page(console.api.service.journal, model, entity_id, seq, size=1)
    if not items:
        raise CommandError("not_found", f"no event {seq}")
    href = url("/ui/entity", type=model.type_name, id=entity_id, seq=seq)
    row = _row(items[0], href, False)
    return row.replace("<tr ", '<tr class="new" ', 1).encode()
