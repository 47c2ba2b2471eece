"""The `memoir` command line.

One `add_<command>` function per subcommand builds its parser (with examples in its epilog)
and one async function runs it. Options come in three groups, each added in one place:
`_where` (which data dir, journal, NATS, prefix and app; every command), `_client_options` (how a
client command talks and prints: --json, --timeout; every command but `run`), and the
run-only options in `add_run`. How a command ends — stdout, stderr, exit status — is one
rule for all of them, in `outcome.py`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

import anyio
import msgspec

from ...engine.history import history, state_at
from ...engine.runtime import Runtime
from ...journal import open_journal
from ...model.app import App
from ...model.entity import EventSourcedEntity, model_of
from ...model.errors import CommandError, ConfigError, ErrorCode, MemoirError
from ...model.sealing import EntityForgotten
from ...wire.nats import redact
from ...wire.protocol import check_entity_id
from ..process import eventloop
from ..process.appspec import cwd_on_path, load_app
from ..process.datadir import hold
from ..process.identity import owner_only_umask
from ..process.run import serve
from ..service.client import Client, NotServing
from ..service.cluster import ClusterConfig, snapshot
from ..service.journal_reader import JournalReader, forget_offline, key_ring
from ..service.specs.asyncapi import render as render_schema
from . import auth_flags
from .bearer import bearer_token
from .outcome import BROKEN_PIPE, INTERRUPTED, Failure, not_found, report, rule, unreachable
from .target import Target, client_target, run_settings
from .timers import timers

# -- output ----------------------------------------------------------------------------------------


def _print(args: argparse.Namespace, value: Any, human: str) -> None:
    print(msgspec.json.encode(value).decode() if args.json else human)


def _entity_type(app: App, type_name: str) -> type[EventSourcedEntity[Any]]:
    """The app's entity class, or the same `unknown_entity_type` answer a runtime gives."""
    try:
        return app.entity(type_name)
    except ConfigError:
        known = ", ".join(sorted(e.type_name for e in app.entities)) or "none"
        raise CommandError(
            ErrorCode.UNKNOWN_ENTITY_TYPE, f"app {app.name!r} has no entity type {type_name!r} (known: {known})"
        ) from None


# -- memoir run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    if args.app_spec:
        args.app = args.app_spec
    owner_only_umask()  # the data dir, journal, view store and NATS store: 0700/0600 (see private.py)
    await serve(run_settings(args), auth=auth_flags.from_args(args))
    return 0


def add_run(sub: Any) -> None:
    r = sub.add_parser(
        "run",
        help="start the runtime as a process",
        description="Host an app's entities, views and consumers, serving commands over NATS until SIGTERM/SIGINT.",
        epilog=_examples(
            "memoir run                          # the example entities; embedded NATS and SQLite in ./.memoir",
            "memoir run shop:app                 # the App named app in ./shop.py",
            "memoir run shop:app --data-dir /var/lib/shop --metrics-port 9090",
            "memoir run --journal postgresql://memoir@db/shop --nats-url nats://nats:4222",
            client=False,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "app_spec", nargs="?", metavar="APP", help="the App as module:attribute, e.g. shop:app (default entities:app)"
    )
    _where(r, app=False)
    # The run-only options: add new ones here.
    g = r.add_argument_group("runtime (each also a MEMOIR_* environment variable)")
    g.add_argument("--view-store", dest="view_store_url", help="view store URL (default SQLite in the data dir)")
    g.add_argument("--log-format", choices=["auto", "console", "json"], help="log format (default auto)")
    g.add_argument("--log-level", help="debug, info, warning or error (default info)")
    g.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free port)")
    g.add_argument("--metrics-host", help="the metrics endpoint's address (default 127.0.0.1; 0.0.0.0 in a container)")
    g.add_argument("--http-port", type=int, help="serve the HTTP API on this port (0: any free port; default off)")
    g.add_argument("--http-host", help="the HTTP API's address (default 127.0.0.1; 0.0.0.0 in a container)")
    g.add_argument("--mailbox-size", type=int, help="commands queued per entity before `overloaded` (default 256)")
    g.add_argument("--max-live-actors", type=int, help="entities kept in memory, least recently used out (100000)")
    g.add_argument("--passivate-after", type=float, help="seconds an idle entity stays in memory (default 300)")
    g.add_argument("--workers", type=int, help="NATS requests served at once (default 256)")
    s = r.add_argument_group("event streams")
    s.add_argument("--stream-storage", choices=["file", "memory"], help="storage (default file)")
    s.add_argument("--stream-replicas", type=int, help="replicas (default 1; 3 on a NATS cluster)")
    s.add_argument("--stream-max-age", type=float, help="seconds a message is kept (default 0: forever)")
    s.add_argument("--stream-duplicate-window", type=float, help="seconds JetStream remembers message ids (120)")
    c = r.add_argument_group("cluster")
    c.add_argument(
        "--cluster",
        action="store_true",
        default=None,
        help="share the entity space with the other `memoir run` processes on this NATS"
        " (needs a postgresql:// or nats:// journal)",
    )
    c.add_argument("--shards", type=int, help="shard count, fixed for the cluster's life (default 256)")
    c.add_argument("--lease-ttl", type=float, help="seconds before a dead member's shards move (default 3)")
    j = r.add_argument_group("verified callers (bearer JWTs; the HMAC secret also as MEMOIR_JWT_SECRET)")
    j.add_argument("--jwt-secret-file", help="a file holding the HMAC secret (at least 32 bytes)")
    j.add_argument("--jwt-public-keys", help="PEM public key files, comma-separated (RSA, EC, Ed25519)")
    j.add_argument("--jwt-jwks-file", help="a JWKS file of public keys, chosen by the token's kid")
    j.add_argument("--jwt-audience", help="the aud every token must carry")
    j.add_argument("--jwt-issuer", help="the iss every token must carry")
    j.add_argument("--jwt-leeway", type=float, help="seconds of clock skew allowed on exp/nbf (default 30)")
    j.add_argument("--jwt-max-header", type=int, help="bytes of Authorization header accepted (default 8192)")
    r.set_defaults(fn=run)


# -- memoir send / query / replay / cluster: over NATS ---------------------------------------------


async def send(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        raise CommandError(ErrorCode.INVALID, f"ARGS is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError(ErrorCode.INVALID, "ARGS must be a JSON object of the command's arguments")
    check_entity_id(args.id)
    token = bearer_token(args)
    target = client_target(args)
    async with _Connected(target, args) as client:
        reply = await _asking(
            target,
            client.send(
                args.type, args.id, args.cmd, payload, command_id=args.command_id, timeout=args.timeout, token=token
            ),
        )
    again = " (repeat of an earlier command id: nothing stored)" if reply.duplicate else ""
    _print(
        args,
        {"ok": True, "result": reply.result, "seq": reply.seq, "duplicate": reply.duplicate},
        f"{msgspec.json.encode(reply.result).decode()} (seq {reply.seq}){again}",
    )
    return 0


def add_send(sub: Any) -> None:
    s = _subcommand(
        sub,
        "send",
        "send one command to an entity of the running runtime",
        'memoir send inventory XYZ-1 receive \'{"units": 5, "on": "2022-03-01"}\'',
        'memoir send inventory XYZ-1 receive \'{"units": 5, "on": "2022-03-01"}\' --command-id order-17/line-2',
        'memoir send inventory XYZ-1 sell \'{"units": 1, "on": "2022-03-02"}\' --json',
    )
    s.add_argument("type", metavar="TYPE", help="entity type, e.g. inventory")
    s.add_argument("id", metavar="ID", help="entity id, e.g. XYZ-1")
    s.add_argument("cmd", metavar="COMMAND", help="command name, e.g. receive")
    s.add_argument("args", nargs="?", metavar="ARGS", help="the command's arguments as a JSON object (default {})")
    s.add_argument("--command-id", help="idempotency key: a repeat gets the first reply and stores nothing")
    tok = s.add_mutually_exclusive_group()
    tok.add_argument("--token-file", help="a file holding the bearer JWT to send (or set MEMOIR_TOKEN)")
    tok.add_argument("--token", help="the bearer JWT itself (visible in `ps`: prefer --token-file or MEMOIR_TOKEN)")
    s.set_defaults(fn=send)


class _Connected:
    """A Client on a NATS connection made with the CLI's timeout and errors."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.target, self.timeout = target, args.timeout
        self.client: Client | None = None

    async def __aenter__(self) -> Client:
        nc, _ = await self.target.connect(self.timeout)
        self.client = Client(nc=nc, prefix=self.target.settings.prefix)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None and self.client.nc is not None
        with anyio.move_on_after(5, shield=True):
            await self.client.nc.close()


async def _asking(target: Target, request: Any) -> Any:
    """Await a request, turning "nobody serves it" and "no answer in time" into the CLI's errors."""
    try:
        return await request
    except NotServing:
        raise unreachable(
            f"no Memoir runtime is serving {target.settings.prefix}.* on {redact(target.nats_url())}"
            f" (is `memoir run` running with data dir {target.data} and prefix {target.settings.prefix}?)"
        ) from None
    except TimeoutError as exc:
        raise Failure("timeout", f"{exc} (the runtime is up but did not answer in time)") from None


async def _request(args: argparse.Namespace, target: Target, subject: str, payload: dict[str, Any]) -> Any:
    async with _Connected(target, args) as client:
        asked = client.request(subject, msgspec.json.encode(payload), timeout=args.timeout)
        answer = await _asking(target, asked)
    return answer.result


async def query(args: argparse.Namespace) -> int:
    target = client_target(args)
    prefix = target.settings.prefix
    if args.key is not None:
        row = await _request(args, target, f"{prefix}.view.{args.view}.get", {"key": args.key})
        if row is None:
            raise not_found(f"view {args.view} has no row {args.key!r}")
        _print(args, row, json.dumps(row, ensure_ascii=False, indent=2))
        return 0
    rows = await _request(args, target, f"{prefix}.view.{args.view}.scan", {"after": args.after, "limit": args.limit})
    if args.json:
        print(msgspec.json.encode(rows).decode())
    else:
        for key, row in rows:
            print(f"{key}\t{json.dumps(row, ensure_ascii=False)}")
    return 0


def add_query(sub: Any) -> None:
    q = _subcommand(
        sub,
        "query",
        "read a view of the running runtime: one row by KEY, or rows in key order",
        "memoir query posts_by_author ann",
        "memoir query posts_by_author --after ann --limit 10 --json",
    )
    q.add_argument("view", metavar="VIEW", help="the view's name")
    q.add_argument("key", nargs="?", metavar="KEY", help="one row's key (default: scan rows in key order)")
    q.add_argument("--after", default="", help="scan: start after this key")
    q.add_argument("--limit", type=int, default=100, help="scan: at most this many rows (default 100)")
    q.set_defaults(fn=query)


async def replay(args: argparse.Namespace) -> int:
    target = client_target(args)
    await _request(args, target, f"{target.settings.prefix}.admin.replay", {"view": args.view})
    _print(args, {"ok": True}, f"view {args.view} is being rebuilt from the start of its streams")
    return 0


def add_replay(sub: Any) -> None:
    rp = _subcommand(
        sub, "replay", "rebuild a view of the running runtime from history", "memoir replay posts_by_author"
    )
    rp.add_argument("view", metavar="VIEW", help="the view's name")
    rp.set_defaults(fn=replay)


async def cluster(args: argparse.Namespace) -> int:
    target = client_target(args)
    nc, url = await target.connect(args.timeout)
    try:
        with anyio.fail_after(args.timeout * 3):
            snap = await snapshot(nc, ClusterConfig(name=target.settings.prefix))
    except TimeoutError:
        raise Failure("timeout", f"no cluster state readable at {redact(url)} within {args.timeout * 3:.0f}s") from None
    finally:
        await nc.close()
    print(snap.to_json().decode() if args.json else snap.render())
    return 0


def add_cluster(sub: Any) -> None:
    c = _subcommand(
        sub,
        "cluster",
        "members, shards per member, lease ages, singletons",
        "memoir cluster --nats-url nats://n1:4222",
        "memoir cluster --json",
    )
    c.set_defaults(fn=cluster)


async def schema(args: argparse.Namespace) -> int:
    target = client_target(args)
    print(render_schema(target.app(), prefix=target.settings.prefix, fmt=args.format))
    return 0


def add_schema(sub: Any) -> None:
    sc = _subcommand(
        sub,
        "schema",
        "the app's NATS protocol as an AsyncAPI 3.0 document, or its events as JSON Schema",
        "memoir schema > asyncapi.json",
        "memoir schema --app shop:app --format jsonschema",
    )
    sc.add_argument("--format", choices=["asyncapi", "jsonschema"], default="asyncapi", help="(default asyncapi)")
    sc.set_defaults(fn=schema)


# -- memoir events / state / export: straight from the journal -------------------------------------


def _event_dict(env: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "entity_type": env.entity_type,
        "entity_id": env.entity_id,
        "seq": env.seq,
        "position": env.position,
        "event": env.name,
        "version": env.version,
        "recorded_at": env.recorded.isoformat(),
        "command_id": env.command_id,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "principal": env.principal,
        **payload,  # the decoded payload; sealed ones opened or kept sealed, forgotten ones marked (forgetting.py)
    }


async def events(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    _entity_type(target.app(), args.type)
    async with open_journal(target.settings.journal(), nats_auth=target.auth) as journal:
        reader = JournalReader(journal)
        found = 0
        from_seq = 1
        while page := await journal.read(args.type, args.id, from_seq=from_seq, limit=1000):
            for env in page:
                found += 1
                d = _event_dict(env, await reader.payload(env))
                shown = d.get("error") or msgspec.json.encode(d["payload"]).decode()
                shown = "(forgotten)" if d.get("forgotten") else shown
                who = env.principal or "-"
                _print(args, d, f"{env.seq:>5}  {d['recorded_at']}  {who:<16} {env.name:<16} {shown}")
            from_seq = page[-1].seq + 1
        if not found:
            deleted = await journal.is_deleted(args.type, args.id)
            raise not_found(f"{args.type}/{args.id} {'was deleted' if deleted else 'has no events'} in {journal.url}")
    return 0


def add_events(sub: Any) -> None:
    e = _subcommand(
        sub,
        "events",
        "an entity's history, read from the journal",
        "memoir events inventory XYZ-1",
        "memoir events inventory XYZ-1 --json | jq .payload",
    )
    e.add_argument("type", metavar="TYPE", help="entity type, e.g. inventory")
    e.add_argument("id", metavar="ID", help="entity id, e.g. XYZ-1")
    e.set_defaults(fn=events)


async def state(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    model = model_of(_entity_type(target.app(), args.type))
    at = None
    if args.at:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise ConfigError(f"--at {args.at!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)") from None
        if at.tzinfo is None:
            raise ConfigError(f"--at {args.at!r} has no timezone; add Z or +hh:mm")
    if args.seq is not None and args.seq < 0:
        raise ConfigError(f"--seq {args.seq} is negative; seq 0 is the initial state, 1 the first event")
    async with open_journal(target.settings.journal(), nats_auth=target.auth) as journal:
        keys = key_ring(journal) if model.encrypted else None
        try:
            value, seq = await state_at(journal, model, args.id, seq=args.seq, at=at, keys=keys)
        except EntityForgotten as exc:
            raise CommandError(ErrorCode.FORGOTTEN, str(exc)) from None
    if args.seq is not None and seq < args.seq:
        raise not_found(f"{args.type}/{args.id} has no seq {args.seq}: its last event is seq {seq}")
    _print(args, {"seq": seq, "state": value}, f"after seq {seq}: {msgspec.json.encode(value).decode()}")
    return 0


def add_state(sub: Any) -> None:
    st = _subcommand(
        sub,
        "state",
        "an entity's state now, after event N, or at a time: the fold of its events",
        "memoir state inventory XYZ-1",
        "memoir state inventory XYZ-1 --seq 1",
        "memoir state inventory XYZ-1 --at 2026-11-22T10:00:00Z --json",
    )
    st.add_argument("type", metavar="TYPE", help="entity type, e.g. inventory")
    st.add_argument("id", metavar="ID", help="entity id, e.g. XYZ-1")
    when = st.add_mutually_exclusive_group()
    when.add_argument("--seq", type=int, help="the state right after this event (0: the initial state)")
    when.add_argument("--at", help="the state as of this recorded time (ISO 8601 with timezone)")
    st.set_defaults(fn=state)


async def export(args: argparse.Namespace) -> int:
    target = client_target(args)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115, ASYNC230 - the CLI's own output
    count = 0
    try:
        async with open_journal(target.settings.journal(), nats_auth=target.auth) as journal:
            reader = JournalReader(journal, decrypt=args.decrypt)
            position = args.from_position
            while page := await journal.read_all(position, limit=1000):
                for env in page:
                    out.write(msgspec.json.encode(_event_dict(env, await reader.payload(env))).decode() + "\n")
                    count += 1
                position = page[-1].position + 1
        out.flush()
    finally:
        if args.out:
            out.close()
    print(f"exported {count} events", file=sys.stderr)
    if reader.unreadable:
        raise Failure("unreadable", f"{reader.unreadable} sealed payloads did not open; their rows say why", status=1)
    return 0


def add_export(sub: Any) -> None:
    x = _subcommand(
        sub,
        "export",
        "the whole journal as JSON Lines, in position order",
        "memoir export > journal.jsonl",
        "memoir export --from 1001 --out tail.jsonl",
        "memoir export | head -3",
    )
    x.add_argument("--from", dest="from_position", type=int, default=1, help="first journal position (default 1)")
    x.add_argument("--out", help="file to write (default stdout)")
    x.add_argument(
        "--decrypt",
        action="store_true",
        help="open encrypted payloads (default: kept sealed, so forgetting an entity reaches the archive too)",
    )
    x.set_defaults(fn=export)


# -- memoir forget: crypto-shredding ---------------------------------------------------------------


async def forget(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    if args.offline:
        with hold(target.data, "--offline writes straight into the journal: stop `memoir run` first"):
            async with open_journal(target.settings.journal(), nats_auth=target.auth) as journal:
                result = msgspec.to_builtins(await forget_offline(target.app(), journal, args.type, args.id))
    else:
        payload = {"type": args.type, "id": args.id}
        result = await _request(args, target, f"{target.settings.prefix}.admin.forget", payload)
    already = " (it was forgotten before)" if result["already"] else ""
    human = f"{args.type}/{args.id} forgotten: its events keep their seqs, their payloads are unreadable{already}"
    _print(args, result, human)
    return 0


def add_forget(sub: Any) -> None:
    f = _subcommand(
        sub,
        "forget",
        "forget an entity of an encrypted type: destroy its data key (crypto-shredding)",
        "memoir forget profile 8f14e45f",
        "memoir forget profile 8f14e45f --offline    # no runtime running: on the data dir's journal",
    )
    f.add_argument("type", metavar="TYPE", help="an entity type declared encrypted=True")
    f.add_argument("id", metavar="ID", help="entity id")
    f.add_argument("--offline", action="store_true", help="apply to the data dir's journal (only when no runtime runs)")
    f.set_defaults(fn=forget)


# -- memoir demo -----------------------------------------------------------------------------------

_SEED: list[tuple[str, dict[str, Any]]] = [
    ("open", {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}),
    ("receive", {"units": 100, "on": "2022-03-01"}),
    ("sell", {"units": 20, "on": "2022-03-15"}),
    ("receive", {"units": 50, "on": "2022-03-15"}),
    ("sell", {"units": 20, "on": "2022-04-01"}),
    ("adjust", {"units": -20, "on": "2022-04-01", "reason": "stock count"}),
]
_DEMO_APP = "entities:app"
_DEMO_DATA_DIR = ".memoir-demo"  # not .memoir: the demo never writes into a runtime's journal by default


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())


def _fmt_event(event: msgspec.Struct) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(event).items())
    return f"{type(event).__name__}({fields})"


def _fmt(d: date | None) -> str:
    return d.isoformat() if d else "-"


async def demo(args: argparse.Namespace) -> int:
    """Writes straight into the data dir's journal, so it holds the data dir as `memoir run` does.

    The demo's app is found by name, as `memoir run` finds its default: the framework never imports
    its examples (a contract in CI holds it).
    """
    app = load_app(_DEMO_APP)
    inventory = model_of(app.entity("inventory"))
    if not args.data_dir and not os.environ.get("MEMOIR_DATA_DIR"):
        args.data_dir = _DEMO_DATA_DIR
    target = client_target(args)
    if target.manifest is not None and target.manifest.app != _DEMO_APP:
        raise ConfigError(
            f"data dir {target.data} belongs to app {target.manifest.app}; the demo plays {_DEMO_APP}:"
            " give it a data dir of its own (--data-dir)"
        )
    url = target.settings.journal()
    sku = args.sku
    out = sys.stdout
    with hold(target.data, "the demo writes straight into the journal: give it its own --data-dir"):
        out.write(f"Memoir demo: inventory item {sku}, event-sourced on {url}\n\n")
        async with open_journal(url, nats_auth=target.auth) as journal:
            async with Runtime(app, journal) as rt:
                out.write("commands (each carries a command id, so running the demo again changes nothing):\n")
                for n, (name, cmd_args) in enumerate(_SEED, 1):
                    try:
                        reply = await rt.ask("inventory", sku, name, cmd_args, command_id=f"demo-{sku}-{n}")
                    except CommandError as exc:
                        out.write(f"  {name}({_fmt_args(cmd_args)}) -> {exc.code}: {exc.message}\n")
                        continue
                    again = "  (repeat: first reply returned, nothing stored)" if reply.duplicate else ""
                    out.write(f"  {name}({_fmt_args(cmd_args)}) -> {reply.result} units, seq {reply.seq}{again}\n")
                try:
                    await rt.ask("inventory", sku, "sell", {"units": 1000, "on": "2022-04-02"})
                except CommandError as exc:
                    out.write(f"  sell(units=1000, on=2022-04-02) -> {exc.code}: {exc.message}\n")

            out.write(f"\nhistory of inventory/{sku}, rebuilt from the journal (state after each event):\n")
            out.write(f"  {'seq':>3}  {'event':<58} {'units':>5}  {'last in':<10}  {'last out':<10}\n")
            async for item in history(journal, inventory, sku):
                s, seq, event = item.state, item.envelope.seq, _fmt_event(item.event)
                out.write(f"  {seq:>3}  {event:<58} {s.units:>5}  {_fmt(s.last_in):<10}  {_fmt(s.last_out):<10}\n")
    out.write("\nThe state was never stored: it is the fold of the events above, so any past state can be rebuilt.\n")
    return 0


def add_demo(sub: Any) -> None:
    d = _subcommand(
        sub,
        "demo",
        f"play the seed's inventory scenario and print its history (data dir: {_DEMO_DATA_DIR} unless given)",
        "memoir demo                          # in ./.memoir-demo, beside a running `memoir run` too",
        "memoir demo --sku ABC-2 --data-dir /tmp/memoir-demo",
    )
    d.add_argument("--sku", default="XYZ-1", help="the item's id (default XYZ-1)")
    d.set_defaults(fn=demo)


def add_timers(sub: Any) -> None:
    t = _subcommand(
        sub,
        "timers",
        "an entity's pending timers: when each fires and what it sends",
        "memoir timers reservation r-1",
        "memoir timers transfer t-1 --json",
    )
    t.add_argument("type", metavar="TYPE", help="entity type, e.g. reservation")
    t.add_argument("id", metavar="ID", help="entity id, e.g. r-1")
    t.set_defaults(fn=timers)


# -- the parser ------------------------------------------------------------------------------------


def _examples(*lines: str, client: bool = True) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + rule(client=client)


def _subcommand(sub: Any, name: str, help: str, *examples: str) -> argparse.ArgumentParser:
    """A client subcommand: the `where` and client options, and examples in its epilog."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _where(p)
    _client_options(p)
    return p


def _where(p: argparse.ArgumentParser, *, app: bool = True) -> None:
    """Which runtime: every command. Client commands default to what `memoir run` recorded in the data dir."""
    g = p.add_argument_group("where (each also a MEMOIR_* environment variable)")
    g.add_argument("--data-dir", help="the runtime's data directory (default .memoir)")
    g.add_argument("--journal", dest="journal_url", help="journal URL (default: SQLite in the data dir)")
    g.add_argument("--nats-url", help="NATS URL (default: the embedded server `memoir run` started)")
    g.add_argument("--prefix", help="subject prefix (default memoir)")
    if app:
        g.add_argument("--app", help="the App as module:attribute (default: the data dir's, else entities:app)")
    p.add_argument_group("process").add_argument(
        "--loop", choices=eventloop.CHOICES, help="event loop (MEMOIR_LOOP; default: uvloop if installed)"
    )
    auth_flags.add_flags(p.add_argument_group("NATS credentials and TLS (each also a MEMOIR_NATS_* variable)"))


def _client_options(p: argparse.ArgumentParser) -> None:
    """How a client command talks and prints: every command but `run`. Add client-wide options here."""
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="results, and errors on stderr, as JSON")
    g.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for NATS and a reply (default 5)")


# The subcommands, in the order --help lists them: add a new one here.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    add_run,
    add_send,
    add_events,
    add_timers,
    add_state,
    add_query,
    add_replay,
    add_export,
    add_forget,
    add_cluster,
    add_schema,
    add_demo,
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error follows the CLI's rule: one line, code `usage`, exit 2."""

    def error(self, message: str) -> NoReturn:
        failure = Failure("usage", f"{message} (see `{self.prog} --help`)")
        self.exit(report(failure, as_json="--json" in sys.argv[1:]))


def _version() -> str:
    try:
        return version("memoir")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="memoir",
        description="Event-sourced entities as async actors.",
        epilog=_examples(
            "memoir run shop:app                 # serve the App in ./shop.py",
            'memoir send inventory XYZ-1 receive \'{"units": 5, "on": "2022-03-01"}\'',
            "memoir state inventory XYZ-1 --seq 1",
            "memoir COMMAND --help               # each command's options and examples",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"memoir {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cwd_on_path()  # `memoir run shop:app` finds ./shop.py, as `python -m` would
    args = parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(eventloop.run(args.fn, args, loop=getattr(args, "loop", None)))
    except MemoirError as exc:
        return report(exc, as_json=as_json)
    except BrokenPipeError:
        return _broken_pipe()
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseExceptionGroup as group:  # one error out of a task group (a journal's, a server's)
        sole = _sole(group)
        if isinstance(sole, MemoirError):
            return report(sole, as_json=as_json)
        if isinstance(sole, BrokenPipeError):
            return _broken_pipe()
        raise


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a (nested) group carries, or None if it carries several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


def _broken_pipe() -> int:
    """The reader of stdout went away (`| head`): stop quietly, as a tool killed by SIGPIPE does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit cannot fail again
    return BROKEN_PIPE
