"""The `memoir` command line.

Every subcommand is a small async function; errors from outside (a bad URL,
a bad argument) are one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

import anyio
import msgspec

from ..engine.history import history, state_at
from ..engine.runtime import Runtime
from ..journal import open_journal
from ..model.entity import model_of
from ..model.errors import CommandError, ConfigError, MemoirError
from ..wire.nats import connect
from .client import Client
from .cluster import ClusterConfig, snapshot
from .server import Settings, load_app, nats_url_file, serve


def settings(args: argparse.Namespace) -> Settings:
    """Flags over MEMOIR_* environment variables over defaults, as `memoir run` reads them."""
    names = [f.name for f in msgspec.structs.fields(Settings)]
    return Settings.from_env(**{n: getattr(args, n, None) for n in names})


def journal_url(args: argparse.Namespace) -> str:
    return settings(args).journal()


def nats_url(args: argparse.Namespace) -> str:
    """--nats-url, MEMOIR_NATS_URL, or the embedded server a `memoir run` in this data dir started."""
    s = settings(args)
    if s.nats_url:
        return s.nats_url
    try:
        return nats_url_file(s.data).read_text().strip()
    except OSError:
        raise MemoirError(f"no NATS URL: give --nats-url, or start `memoir run` with data dir {s.data} first") from None


# -- memoir demo -------------------------------------------------------------------------------

_SEED: list[tuple[str, dict[str, Any]]] = [
    ("open", {"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}),
    ("receive", {"units": 100, "on": "2022-03-01"}),
    ("sell", {"units": 20, "on": "2022-03-15"}),
    ("receive", {"units": 50, "on": "2022-03-15"}),
    ("sell", {"units": 20, "on": "2022-04-01"}),
    ("adjust", {"units": -20, "on": "2022-04-01", "reason": "stock count"}),
]


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())


def _fmt_event(event: msgspec.Struct) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(event).items())
    return f"{type(event).__name__}({fields})"


def _fmt(d: date | None) -> str:
    return d.isoformat() if d else "-"


async def demo(args: argparse.Namespace) -> int:
    from entities import InventoryItem, app

    url = journal_url(args)
    sku = args.sku
    out = sys.stdout
    out.write(f"Memoir demo: inventory item {sku}, event-sourced on {url}\n\n")
    async with open_journal(url) as journal:
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
        async for item in history(journal, model_of(InventoryItem), sku):
            s, seq, event = item.state, item.envelope.seq, _fmt_event(item.event)
            out.write(f"  {seq:>3}  {event:<58} {s.units:>5}  {_fmt(s.last_in):<10}  {_fmt(s.last_out):<10}\n")
    out.write("\nThe state was never stored: it is the fold of the events above, so any past state can be rebuilt.\n")
    return 0


# -- memoir run / send / query / replay: over NATS ------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    if args.app_spec:
        args.app = args.app_spec
    await serve(settings(args))
    return 0


def _print(args: argparse.Namespace, value: Any, human: str) -> None:
    print(msgspec.json.encode(value).decode() if args.json else human)


async def send(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ARGS is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ConfigError("ARGS must be a JSON object of the command's arguments")
    async with Client(nats_url(args), prefix=settings(args).prefix) as client:
        try:
            reply = await client.send(
                args.type, args.id, args.cmd, payload, command_id=args.command_id, timeout=args.timeout
            )
        except CommandError as exc:
            _print(
                args,
                {"ok": False, "error": {"code": exc.code, "message": exc.message, "details": exc.details}},
                f"{exc.code}: {exc.message}",
            )
            return 1
    again = " (repeat of an earlier command id: nothing stored)" if reply.duplicate else ""
    _print(
        args,
        {"ok": True, "result": reply.result, "seq": reply.seq, "duplicate": reply.duplicate},
        f"{msgspec.json.encode(reply.result).decode()} (seq {reply.seq}){again}",
    )
    return 0


async def _request(args: argparse.Namespace, subject: str, payload: dict[str, Any]) -> Any:
    url = nats_url(args)
    async with Client(url, prefix=settings(args).prefix) as client:
        try:
            answer = await client.request(subject, msgspec.json.encode(payload), timeout=args.timeout)
        except TimeoutError:
            raise MemoirError(f"no Memoir runtime answered on {subject} at {url}") from None
        except CommandError as exc:
            raise MemoirError(str(exc)) from None
    return answer.result


async def query(args: argparse.Namespace) -> int:
    prefix = settings(args).prefix
    if args.key is not None:
        row = await _request(args, f"{prefix}.view.{args.view}.get", {"key": args.key})
        _print(args, row, json.dumps(row, ensure_ascii=False, indent=2) if row is not None else "(no row)")
        return 0 if row is not None else 1
    rows = await _request(args, f"{prefix}.view.{args.view}.scan", {"after": args.after, "limit": args.limit})
    if args.json:
        print(msgspec.json.encode(rows).decode())
    else:
        for key, row in rows:
            print(f"{key}\t{json.dumps(row, ensure_ascii=False)}")
    return 0


async def replay(args: argparse.Namespace) -> int:
    await _request(args, f"{settings(args).prefix}.admin.replay", {"view": args.view})
    _print(args, {"ok": True}, f"view {args.view} is being rebuilt from the start of its streams")
    return 0


async def cluster(args: argparse.Namespace) -> int:
    url = nats_url(args)
    nc = await connect(url, timeout=args.timeout)
    try:
        with anyio.fail_after(args.timeout * 3):
            snap = await snapshot(nc, ClusterConfig(name=settings(args).prefix))
    except TimeoutError:
        raise MemoirError(f"no cluster state readable at {url} within {args.timeout * 3:.0f}s") from None
    finally:
        await nc.close()
    if args.json:
        print(snap.to_json().decode())
    else:
        print(snap.render())
    return 0


# -- memoir events / state / export: straight from the journal -----------------------------------


def _event_dict(env: Any) -> dict[str, Any]:
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
        "payload": msgspec.json.decode(env.payload),
    }


async def events(args: argparse.Namespace) -> int:
    async with open_journal(journal_url(args)) as journal:
        found = 0
        from_seq = 1
        while page := await journal.read(args.type, args.id, from_seq=from_seq, limit=1000):
            for env in page:
                found += 1
                d = _event_dict(env)
                _print(args, d, f"{env.seq:>5}  {d['recorded_at']}  {env.name:<16} {env.payload.decode()}")
            from_seq = page[-1].seq + 1
        if not found:
            deleted = await journal.is_deleted(args.type, args.id)
            print(f"{args.type}/{args.id} {'was deleted' if deleted else 'has no events'}", file=sys.stderr)
            return 1
    return 0


async def state(args: argparse.Namespace) -> int:
    app = load_app(settings(args).app)
    model = model_of(app.entity(args.type))
    at = None
    if args.at:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise ConfigError(f"--at {args.at!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)") from None
        if at.tzinfo is None:
            raise ConfigError(f"--at {args.at!r} has no timezone; add Z or +hh:mm")
    async with open_journal(journal_url(args)) as journal:
        value, seq = await state_at(journal, model, args.id, seq=args.seq, at=at)
    _print(args, {"seq": seq, "state": value}, f"after seq {seq}: {msgspec.json.encode(value).decode()}")
    return 0


async def export(args: argparse.Namespace) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115, ASYNC230 - the CLI's own output
    count = 0
    try:
        async with open_journal(journal_url(args)) as journal:
            position = args.from_position
            while page := await journal.read_all(position, limit=1000):
                for env in page:
                    out.write(msgspec.json.encode(_event_dict(env)).decode() + "\n")
                    count += 1
                position = page[-1].position + 1
    finally:
        if args.out:
            out.close()
    print(f"exported {count} events", file=sys.stderr)
    return 0


# -- entry point ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("where (each also a MEMOIR_* environment variable)")
    g.add_argument("--data-dir", help="data directory (default .memoir)")
    g.add_argument("--journal", dest="journal_url", help="journal URL (default sqlite in the data dir)")
    g.add_argument("--nats-url", help="NATS URL (default: the embedded server `memoir run` started)")
    g.add_argument("--prefix", help="subject prefix (default memoir)")
    g.add_argument("--app", help="the app as module:attribute (default entities:app)")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")

    p = argparse.ArgumentParser(prog="memoir", description="Event-sourced entities as async actors.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", parents=[common], help="start the runtime as a process")
    r.add_argument("app_spec", nargs="?", metavar="app", help="module:attribute of the App (default entities:app)")
    r.add_argument("--view-store", dest="view_store_url", help="view store URL (default sqlite in the data dir)")
    r.add_argument("--log-format", choices=["auto", "console", "json"])
    r.add_argument("--log-level")
    r.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free port)")
    r.add_argument("--metrics-host", help="the metrics endpoint's address (default 127.0.0.1; 0.0.0.0 in a container)")
    r.add_argument("--mailbox-size", type=int)
    r.add_argument("--max-live-actors", type=int)
    r.add_argument("--passivate-after", type=float, help="seconds an idle actor stays in memory")
    r.add_argument("--workers", type=int, help="NATS requests served at once")
    r.add_argument("--stream-storage", choices=["file", "memory"], help="event streams: storage (default file)")
    r.add_argument("--stream-replicas", type=int, help="event streams: replicas (default 1)")
    r.add_argument("--stream-max-age", type=float, help="event streams: seconds kept (default 0: forever)")
    r.add_argument("--stream-duplicate-window", type=float, help="event streams: dedup window in seconds (120)")
    r.add_argument(
        "--cluster",
        action="store_true",
        default=None,
        help="share the entity space with the other `memoir run` processes on this NATS"
        " (needs a postgresql:// or nats:// journal)",
    )
    r.add_argument("--shards", type=int, help="cluster: shard count, fixed for the cluster's life (default 256)")
    r.add_argument("--lease-ttl", type=float, help="cluster: seconds before a dead member's shards move (default 3)")
    r.set_defaults(fn=run)

    s = sub.add_parser("send", parents=[common], help="send a command: TYPE ID COMMAND [JSON]")
    s.add_argument("type")
    s.add_argument("id")
    s.add_argument("cmd", metavar="command")
    s.add_argument("args", nargs="?", help="the arguments as a JSON object")
    s.add_argument("--command-id", help="idempotency key: a repeat gets the first reply")
    s.set_defaults(fn=send)

    e = sub.add_parser("events", parents=[common], help="an entity's history")
    e.add_argument("type")
    e.add_argument("id")
    e.set_defaults(fn=events)

    st = sub.add_parser("state", parents=[common], help="an entity's state now, after event N, or at a time")
    st.add_argument("type")
    st.add_argument("id")
    when = st.add_mutually_exclusive_group()
    when.add_argument("--seq", type=int, help="the state right after this event")
    when.add_argument("--at", help="the state as of this recorded time (ISO 8601 with timezone)")
    st.set_defaults(fn=state)

    rp = sub.add_parser("replay", parents=[common], help="rebuild a view from history (runtime must be running)")
    rp.add_argument("view")
    rp.set_defaults(fn=replay)

    q = sub.add_parser("query", parents=[common], help="read a view: one row by KEY, or rows in key order")
    q.add_argument("view")
    q.add_argument("key", nargs="?")
    q.add_argument("--after", default="", help="scan: start after this key")
    q.add_argument("--limit", type=int, default=100)
    q.set_defaults(fn=query)

    x = sub.add_parser("export", parents=[common], help="the journal as JSON Lines, from a position")
    x.add_argument("--from", dest="from_position", type=int, default=1)
    x.add_argument("--out", help="file to write (default stdout)")
    x.set_defaults(fn=export)

    c = sub.add_parser("cluster", parents=[common], help="members, shards per member, lease ages, singletons")
    c.set_defaults(fn=cluster)

    d = sub.add_parser("demo", parents=[common], help="run the seed's inventory scenario and print its history")
    d.add_argument("--sku", default="XYZ-1", help="the item's id (default XYZ-1)")
    d.set_defaults(fn=demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(anyio.run(args.fn, args))
    except MemoirError as exc:
        print(f"memoir: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
