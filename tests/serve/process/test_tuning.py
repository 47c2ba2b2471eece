"""`tune_nats` swaps nats-py's header parser for a faster one: it must give the same answer on
every header block, the ones Memoir sends and malformed ones alike."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from runtime.serve.process.tuning import parse_header_lines, tune_nats

ORIGINAL = Client.__dict__["_parse_header_lines"].__func__  # captured before any test patches it

BLOCKS = [
    (
        b"Nats-Msg-Id: inventory/XYZ-1/3\r\nMemoir-Seq: 3\r\nMemoir-Position: 17\r\nMemoir-Event: Received\r\n"
        b"Memoir-Event-Version: 1\r\nMemoir-Recorded-At: 1763800000000000000\r\nMemoir-Command-Id: c%2E1\r\n\r\n"
    ),
    b"Status: 404\r\nDescription: No Messages\r\n\r\n",
    b"",
    b"\r\n\r\n",
    b"NoColon\r\nKey:value\r\nKey2:\tvalue with spaces  \r\n",
    b"  Padded-Name  :   padded value   \r\n",
    b"Bad Name: x\r\nGood-Name: y\r\n",
    b"Tab\tName: x\r\nVtab\x0bName: y\r\nSep\x1cName: z\r\n",
    b": empty name\r\n",
    b"Caf\xc3\xa9: not ascii\r\nValue: caf\xc3\xa9 ok\r\nBroken: \xff\xfe\r\n",
    b"Colon: a:b:c\r\nDup: 1\r\nDup: 2\r\n",
    b"Lone\rCR: x\r\nLone\nLF: y\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_same_headers_as_nats_py(block: bytes) -> None:
    assert parse_header_lines(block) == ORIGINAL(block)


def test_tune_nats_installs_it_and_messages_still_parse() -> None:
    before = Client.__dict__["_parse_header_lines"]
    try:
        assert tune_nats() is True
        assert Client._parse_header_lines(BLOCKS[0])["Memoir-Command-Id"] == "c%2E1"
    finally:
        Client._parse_header_lines = before  # type: ignore[method-assign]
