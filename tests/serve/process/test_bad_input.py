"""Bad input over the wire: each gets its documented code and a message naming the problem,
the process keeps serving, and the journal is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.process import RunningRuntime
from wire.raw import raw_nats

from runtime import SqliteJournal
from runtime.wire.protocol import token

pytestmark = pytest.mark.anyio

GOOD = b'{"units": 5, "on": "2022-03-01"}'
LONG_ID = "x" * 300

CASES: list[tuple[str, str, bytes, dict[str, str] | None, str, str]] = [
    # name, subject suffix, payload, headers, expected code, expected words in the message
    ("malformed json", "inventory.A.receive", b'{"units": ', None, "invalid", "not valid JSON"),
    ("wrong type", "inventory.A.receive", b'{"units": "five", "on": "2022-03-01"}', None, "invalid", "$.units"),
    ("missing field", "inventory.A.receive", b'{"units": 5}', None, "invalid", "missing required field `on`"),
    (
        "extra field",
        "inventory.A.receive",
        b'{"units": 5, "on": "2022-03-01", "x": 1}',
        None,
        "invalid",
        "unknown field `x`",
    ),
    ("not an object", "inventory.A.receive", b"[5, 6]", None, "invalid", "Expected `object`, got `array`"),
    ("null", "inventory.A.receive", b"null", None, "invalid", "Expected `object`, got `null`"),
    ("bad date", "inventory.A.receive", b'{"units": 5, "on": "March"}', None, "invalid", "$.on"),
    ("not utf-8", "inventory.A.receive", b'{"units": 5, "on": "\xff\xfe"}', None, "invalid", "not valid UTF-8"),
    ("binary", "inventory.A.receive", b"\x00\x01\x02\xff", None, "invalid", "not valid UTF-8"),
    ("unknown command", "inventory.A.explode", b"{}", None, "unknown_command", "no command 'explode'"),
    ("unknown entity type", "spaceship.A.launch", b"{}", None, "unknown_entity_type", "no entity type 'spaceship'"),
    ("id too long", f"inventory.{LONG_ID}.receive", GOOD, None, "invalid", "300 characters, the limit is 256"),
    ("id with control characters", "inventory.a%00b.receive", GOOD, None, "invalid", "control characters"),
    ("no id token", "inventory.receive", GOOD, None, "invalid", "<prefix>.cmd.<type>.<id>.<command>"),
    ("too many tokens", "inventory.A.B.receive", GOOD, None, "invalid", "<prefix>.cmd.<type>.<id>.<command>"),
    (
        "payload over the limit",
        "inventory.A.receive",
        b'{"units": 5, "on": "2022-03-01", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        None,
        "invalid",
        "bytes, the limit is 1048576",
    ),
    (
        "command id too long",
        "inventory.A.receive",
        GOOD,
        {"Memoir-Command-Id": "c" * 300},
        "invalid",
        "header Memoir-Command-Id",
    ),
    (
        "timeout not a number",
        "inventory.A.receive",
        GOOD,
        {"Memoir-Timeout-Ms": "soon"},
        "invalid",
        "Memoir-Timeout-Ms",
    ),
    ("timeout negative", "inventory.A.receive", GOOD, {"Memoir-Timeout-Ms": "-5"}, "invalid", "between 1 and 86400000"),
    ("timeout not finite", "inventory.A.receive", GOOD, {"Memoir-Timeout-Ms": "nan"}, "invalid", "Memoir-Timeout-Ms"),
    (
        "negative units (the type says so)",
        "inventory.A.receive",
        b'{"units": -5, "on": "2022-03-01"}',
        None,
        "invalid",
        "Expected `int` >= 1 - at `$.units`",
    ),
]


async def _request(nc: Any, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    msg = await nc.request(f"memoir.cmd.{subject}", payload, timeout=10, headers=headers)
    return json.loads(msg.data)


async def _last_position(data: Path) -> int:
    async with SqliteJournal(data / "journal.db") as journal:
        return await journal.last_position()


async def test_bad_input_matrix(runtime_process: RunningRuntime) -> None:
    nc = await runtime_process.connect()
    try:
        assert (await _request(nc, "inventory.A.open", b'{"units": 1}'))["ok"]
        before = await _last_position(runtime_process.data)
        for name, subject, payload, headers, code, words in CASES:
            answer = await _request(nc, subject, payload, headers)
            assert answer["ok"] is False, name
            assert answer["error"]["code"] == code, (name, answer)
            assert words in answer["error"]["message"], (name, answer)
        assert await _last_position(runtime_process.data) == before, "a bad request persists nothing"
        # ...and the process keeps serving.
        answer = await _request(nc, "inventory.A.receive", GOOD)
        assert answer == {"ok": True, "result": 6, "seq": 2}
    finally:
        await nc.close()


@pytest.mark.parametrize("entity_id", ["with.dots", "with spaces", "ünïcødé ✓", "slash/and%percent", "*>"])
async def test_odd_ids_are_one_token_and_round_trip(runtime_process: RunningRuntime, entity_id: str) -> None:
    nc = await runtime_process.connect()
    try:
        answer = await _request(nc, f"inventory.{token(entity_id)}.open", b'{"units": 3}')
        assert answer == {"ok": True, "result": 3, "seq": 1}
    finally:
        await nc.close()
    events = runtime_process.cli("events", "inventory", entity_id, "--json")
    assert [json.loads(x)["entity_id"] for x in events.stdout.splitlines()] == [entity_id]


async def test_a_subject_that_is_not_utf8_does_not_silence_the_runtime(runtime_process: RunningRuntime) -> None:
    """The exact bytes of issue 22, from the owner of the data dir's key on the embedded defaults:
    nats-py's read loop died of them, and every command timed out from then on."""
    port = int(runtime_process.nats_url.rsplit(":", 1)[1])
    seed = runtime_process.auth.nkey_file
    async with raw_nats(port, nkey_seed_file=seed) as raw:
        await raw.sub(b"_INBOX.zz", 1)
        await raw.send(b"PUB memoir.cmd.inventory.X\xff\xfe1.get _INBOX.zz 2\r\n{}\r\n")
        await raw.send(b'PUB memoir.cmd.inventory.A.open _INBOX.\xff\xfe 12\r\n{"units": 1}\r\n')
        answer = json.loads((await raw.next_frame(20)).payload)
        assert answer["error"] == {"code": "invalid", "message": "subject is not valid UTF-8"}
    nc = await runtime_process.connect()
    try:
        for i in range(3):  # ordinary commands, answered as ever
            assert (await _request(nc, f"inventory.B{i}.open", b'{"units": 1}'))["ok"]
        # the open with the unreadable reply subject was dropped, never run
        assert (await _request(nc, "inventory.A.open", b'{"units": 1}')) == {"ok": True, "result": 1, "seq": 1}
    finally:
        await nc.close()
    assert "NATS message dropped" in (runtime_process.data.parent / "data.log").read_text()


async def test_two_command_ids_that_are_not_utf8_are_not_one(runtime_process: RunningRuntime) -> None:
    """nats-py read both as U+FFFD U+FFFD: the second, a different command, came back a false duplicate."""
    port = int(runtime_process.nats_url.rsplit(":", 1)[1])
    async with raw_nats(port, nkey_seed_file=runtime_process.auth.nkey_file) as raw:
        await raw.sub(b"r.>", 1)
        before = await _last_position(runtime_process.data)
        for n, cid in enumerate((b"\xff\xfe", b"\xfe\xff")):
            headers = b"NATS/1.0\r\nMemoir-Command-Id: " + cid + b"\r\n\r\n"
            await raw.pub(b"memoir.cmd.inventory.C.receive", GOOD, b"r.%d" % n, headers)
            error = json.loads((await raw.next_frame(20)).payload)["error"]
            assert error["code"] == "invalid" and "Memoir-Command-Id" in error["message"], error
        assert await _last_position(runtime_process.data) == before
