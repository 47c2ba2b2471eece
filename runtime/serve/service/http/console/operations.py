"""The operator's pages: views (browse, query), workflows, dead letters (replay), the cluster, metrics.

Each reads what the matching CLI command reads, through the same requests: a view's admin
requests, the journal and the timer stream for workflows, the dead-letter admin requests,
the cluster's buckets, and the metrics registry `/metrics` renders.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from nats.errors import Error as NatsError

from .....model.errors import CommandError, ErrorCode
from .....model.workflow import Run
from .....streams.timer_firing import pending_timers
from .....wire.protocol import check_entity_id, decode_answer
from ...cluster.snapshot import snapshot
from ..request import HttpError
from .html import Html, as_json, esc, link, notice, table, url
from .parts import ConsolePart, Params
from .reading import state_after

ROWS = 50


async def ask(console: ConsolePart, subject: str, payload: Any) -> Any:
    """An admin request over NATS; its result, or a CommandError carrying its error."""
    data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    try:
        msg = await console.api.nc.request(subject, data, timeout=console.api.timeout)
    except NatsError:
        raise HttpError(ErrorCode.UNAVAILABLE, f"no answer on {subject}; retry") from None
    answer = decode_answer(msg.data)
    if not answer.ok:
        error = answer.error
        raise CommandError(error.code if error else "internal", error.message if error else "failed")
    return answer.result


# -- views --------------------------------------------------------------------------------------------


async def views_page(console: ConsolePart, params: Params) -> tuple[str, Html]:
    names = sorted(console.api.service.views)
    rows = [(link(n, url("/ui/views/" + n)),) for n in names]
    return "Views", table(["view"], rows, caption=f"{len(names)} views") if names else notice("This app has no views.")


async def view_page(console: ConsolePart, params: Params, name: str) -> tuple[str, Html]:
    if name not in console.api.service.views:
        raise HttpError("unknown_view", f"no view {name[:64]!r}")
    prefix = console.api.prefix
    after = params.text("after", "")
    query = params.text("q", "")
    parts = [
        f'<form class="inline" method="get" action="{esc(url("/ui/views/" + name))}">'
        '<label for="q">Query (JSON: where, order_by, limit…)</label>'
        f'<textarea id="q" name="q" placeholder="{{&quot;limit&quot;: 10}}">{esc(query)}</textarea>'
        '<button type="submit">Run query</button></form>'
    ]
    if query:
        try:
            msgspec.json.decode(query)
            result = await ask(console, f"{prefix}.view.{name}.query", query.encode())
            parts.append(f'<h2>Query result</h2><pre id="query-result">{esc(as_json(result))}</pre>')
        except msgspec.DecodeError as exc:
            parts.append(notice(f"the query is not JSON: {exc}", error=True))
        except CommandError as exc:
            parts.append(notice(str(exc), error=True))
    rows = await ask(console, f"{prefix}.view.{name}.scan", {"after": after, "limit": ROWS})
    parts.append("<h2>Rows</h2>")
    parts.append(
        table(
            ["key", "row"],
            [(k, as_json(v)) for k, v in rows],
            caption=f"rows after {after!r}" if after else "first rows",
        )
    )
    if len(rows) == ROWS:
        parts.append(link("Next rows", url("/ui/views/" + name, after=rows[-1][0])))
    return f"View {name}", Html("".join(parts))


# -- workflows ----------------------------------------------------------------------------------------


def workflow_types(console: ConsolePart) -> list[str]:
    return sorted(t for t, m in console.api.models.items() if isinstance(m.initial, Run))


async def workflows_page(console: ConsolePart, params: Params) -> tuple[str, Html]:
    types = workflow_types(console)
    if not types:
        return "Workflows", notice("This app has no workflows.")
    wf_type, wf_id = params.text("type", types[0]), params.text("id", "")
    options = "".join(f"<option{' selected' if t == wf_type else ''}>{esc(t)}</option>" for t in types)
    form = (
        '<form class="inline" method="get" action="/ui/workflows" role="search">'
        f'<label>Workflow type<select name="type">{options}</select></label>'
        f'<label>Workflow id<input name="id" value="{esc(wf_id)}" required autocomplete="off"></label>'
        '<button type="submit">Show</button></form>'
    )
    if not wf_id:
        return "Workflows", Html(form + notice("Choose a workflow by its id."))
    if wf_type not in types:
        raise HttpError("invalid", f"{wf_type[:64]!r} is not a workflow type")
    wf_id = check_entity_id(wf_id)
    journal = console.api.service.journal
    run, seq = await state_after(journal, console.api.models[wf_type], wf_id, None)
    if seq == 0:
        return f"{wf_type} {wf_id}", Html(form + notice("No such workflow (it has no events)."))
    summary = [
        ("status", run.status),
        ("current step", run.step or "—"),
        ("attempt", run.attempt),
        ("failed", run.failed or "—"),
        ("events", seq),
        ("state", bytes(run.state).decode()),
    ]
    steps = [(i + 1, r.step, r.attempt, r.outcome, r.detail or "") for i, r in enumerate(run.history)]
    timers = await pending_timers(
        journal, console.api.nc, prefix=console.api.prefix, entity_type=wf_type, entity_id=wf_id, workflow=True
    )
    now = dt.datetime.now(dt.UTC)
    timer_rows = [
        (t.name, t.due_at.isoformat(timespec="seconds"), f"{(t.due_at - now).total_seconds():.1f} s", t.command)
        for t in timers
    ]
    retries = sum(1 for r in run.history if r.outcome == "failed")
    body = (
        form
        + table(["field", "value"], summary, caption="Status")
        + f"<h2>Steps ({len(steps)}, {retries} failed attempts)</h2>"
        + table(["#", "step", "attempt", "outcome", "detail"], steps, caption="Step history, oldest first")
        + "<h2>Pending timers</h2>"
        + (
            table(["name", "due", "in", "sends"], timer_rows, caption="Timers not fired yet")
            if timers
            else notice("No pending timers.")
        )
        + link("Its events and states", url("/ui/entity", type=wf_type, id=wf_id))
    )
    return f"{wf_type} {wf_id}", Html(body)


# -- dead letters -------------------------------------------------------------------------------------


async def dead_letters_page(console: ConsolePart, params: Params) -> tuple[str, Html]:
    consumers = sorted(console.api.service.consumers)
    done = params.text("done", "")[:200]
    parts: list[str] = [notice(f"Last action: {done}")] if done else []
    if not consumers:
        parts.append(notice("This app has no consumers."))
    for name in consumers:
        parked = await ask(console, f"{console.api.prefix}.admin.deadletters.list", {"consumer": name, "limit": ROWS})
        parts.append(f"<h2>{esc(name)}</h2>")
        if not parked:
            parts.append(notice(f"{name} has no parked events."))
            continue
        rows = []
        for p in parked:
            item = msgspec.to_builtins(p)
            seq = item.get("seq")
            button = Html(
                '<form method="post" action="/ui/deadletters/replay">'
                f'<input type="hidden" name="consumer" value="{esc(name)}">'
                f'<input type="hidden" name="seq" value="{esc(seq)}">'
                f'<button type="submit" aria-label="Replay parked event {esc(seq)} of {esc(name)}">'
                "Replay</button></form>"
            )
            rows.append(
                (
                    seq,
                    _event_link(str(item.get("event", ""))),
                    item.get("name", ""),
                    item.get("parked_at", ""),
                    item.get("error", ""),
                    button,
                )
            )
        headers = ["seq", "event", "name", "parked at", "error", "action"]
        parts.append(table(headers, rows, caption=f"Events {name} parked"))
    return "Dead letters", Html("".join(parts))


def _event_link(event: str) -> Html | str:
    """`type/id/seq` as a link to that entity's state at that seq (ids may hold `/`: seq is last)."""
    entity, _, seq = event.rpartition("/")
    entity_type, _, entity_id = entity.partition("/")
    if not (entity_type and entity_id and seq.isdigit()):
        return event
    return link(event, url("/ui/entity", type=entity_type, id=entity_id, seq=seq))


async def replay(console: ConsolePart, form: dict[str, str]) -> str:
    consumer, seq = form.get("consumer", ""), form.get("seq", "")
    if not seq.isdigit():
        raise HttpError("invalid", "seq must be a number")
    out = await ask(console, f"{console.api.prefix}.admin.deadletters.replay", {"consumer": consumer, "seq": int(seq)})
    if out.get("failed"):
        return f"{consumer} {seq}: failed again ({out['failed'][0].get('error')}); still parked"
    return f"{consumer} {seq}: replayed"


# -- the cluster and metrics --------------------------------------------------------------------------


def ranges(numbers: list[int]) -> str:
    """Shard numbers as runs: `0-127, 200`."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


async def cluster_page(console: ConsolePart, params: Params) -> tuple[str, Html]:
    svc = console.api.service
    if svc.cluster_config is None:
        return "Cluster", notice("This process runs alone (not a cluster member).")
    snap = await snapshot(console.api.nc, svc.cluster_config)
    members = [(m.id, m.host, m.pid, m.shards, f"{m.up_s:.0f} s", f"{m.heartbeat_age_s:.1f} s") for m in snap.members]
    singles = [(k, v.owner, f"{v.age_s:.1f} s", f"{v.held_s:.0f} s") for k, v in sorted(snap.singletons.items())]
    shard_leases: dict[str, list[float]] = {}  # one row per owner, not one per shard: the oldest renewal
    leases = []
    for v in snap.leases:
        if v.key.startswith("shard."):
            shard_leases.setdefault(v.owner, []).append(v.age_s)
        else:
            leases.append((v.key, v.owner, f"{v.age_s:.1f} s", f"{v.held_s:.0f} s"))
    leases += [(f"{len(ages)} shard leases", o, f"{max(ages):.1f} s at most", "") for o, ages in shard_leases.items()]
    shards = [(m, len(s), ranges(s)) for m, s in sorted(snap.shards_per_member.items())]
    body = (
        f"<p>{snap.shard_count} shards, {len(snap.unowned_shards)} unowned.</p>"
        + table(["member", "host", "pid", "shards", "up", "heartbeat age"], members, caption="Members")
        + table(["member", "count", "shards"], shards, caption="Shards per member")
        + table(["singleton", "runs on", "lease age", "held"], singles, caption="Singletons")
        + table(["lease", "owner", "age", "held"], leases, caption="Leases")
    )
    return "Cluster", Html(body)


GLANCE = {
    "memoir_commands_total": "Commands",
    "memoir_live_actors": "Live actors",
    "memoir_publisher_lag": "Publisher lag",
    "memoir_view_lag": "View lag",
    "memoir_consumer_lag": "Consumer lag",
    "memoir_consumer_parked": "Parked events",
    "memoir_cluster_shards_owned": "Shards owned",
}


async def metrics_page(console: ConsolePart, params: Params) -> tuple[str, Html]:
    metrics = console.metrics
    await metrics.refresh()
    totals: dict[str, float] = {}
    rows = []
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            rows.append((sample.name, labels, f"{sample.value:g}"))
            if sample.name in GLANCE:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    cards = "".join(
        f'<div class="card"><div>{esc(title)}</div><div class="n">{totals.get(name, 0):g}</div></div>'
        for name, title in GLANCE.items()
    )
    return "Metrics", Html(
        f'<div class="grid">{cards}</div>'
        + table(["metric", "labels", "value"], rows, caption="Every sample /metrics serves")
    )
