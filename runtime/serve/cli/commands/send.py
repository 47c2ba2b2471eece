"""`memoir send`: one command to an entity of the running runtime."""

from __future__ import annotations

import argparse
import json
import sys

from ....model.errors import CommandError, ErrorCode
from ....wire.protocol import check_entity_id
from ..base import Subparsers, subcommand
from ..bearer import bearer_token
from ..output import json_line, table
from ..remote import Connected, asking
from ..target import client_target


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
    async with Connected(target, args) as client:
        asked = client.send(
            args.type, args.id, args.cmd, payload, command_id=args.command_id, timeout=args.timeout, token=token
        )
        reply = await asking(target, asked)
    if args.json:
        print(json_line({"ok": True, "result": reply.result, "seq": reply.seq, "duplicate": reply.duplicate}))
        return 0
    print(table(["SEQ", "RESULT"], [[reply.seq, reply.result]]))
    if reply.duplicate:  # a note for people, beside the result: scripts read `duplicate` in --json
        print(
            f"memoir: repeat of an earlier command id ({args.command_id}): the first reply, nothing stored",
            file=sys.stderr,
        )
    return 0


def add(sub: Subparsers) -> None:
    s = subcommand(
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
