"""`memoir forget`: crypto-shredding an entity of an encrypted type, online or on a stopped data dir."""

from __future__ import annotations

import argparse

import msgspec

from ....journal import open_journal
from ....wire.protocol import check_entity_id
from ...process.datadir import lock_data_dir
from ...service.journal_reader import forget_offline
from ..base import Subparsers, subcommand
from ..output import json_line
from ..remote import request
from ..target import client_target


async def forget(args: argparse.Namespace) -> int:
    check_entity_id(args.id)
    target = client_target(args)
    if args.offline:
        with lock_data_dir(target.data, "--offline writes straight into the journal: stop `memoir run` first"):
            async with open_journal(target.settings.journal(), nats_auth=target.auth) as journal:
                result = msgspec.to_builtins(await forget_offline(target.app(), journal, args.type, args.id))
    else:
        payload = {"type": args.type, "id": args.id}
        result = await request(args, target, f"{target.settings.prefix}.admin.forget", payload)
    already = " (it was forgotten before)" if result["already"] else ""
    human = f"{args.type}/{args.id} forgotten: its events keep their seqs, their payloads are unreadable{already}"
    print(json_line(result) if args.json else human)
    return 0


def add(sub: Subparsers) -> None:
    f = subcommand(
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
