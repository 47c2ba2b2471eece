"""The protocol's checks on what arrives from the edge: ids and headers that are not what they claim."""

from __future__ import annotations

import pytest

from runtime.model.errors import CommandError
from runtime.wire.protocol import (
    MAX_HEADER_BYTES,
    check_headers,
    header_id,
    parse_command_subject,
    readable,
    token,
    trace_id,
    untoken,
)


def test_percent_escapes_that_are_not_utf8_are_refused_not_replaced() -> None:
    with pytest.raises(UnicodeDecodeError):
        untoken("X%FF1")
    with pytest.raises(CommandError, match="not valid UTF-8 once percent-decoded") as info:
        parse_command_subject("memoir.cmd.inventory.X%FF%FE1.get", 1)
    assert info.value.code == "invalid"
    assert untoken(token("ünï.✓ %")) == "ünï.✓ %"


def test_header_values_must_have_been_utf8_and_small() -> None:
    assert readable("plain") and readable("ünï") and not readable("\udcff\udcfe")
    check_headers({"Memoir-Command-Id": "ünï", "Authorization": "Bearer " + "t" * 4000})
    with pytest.raises(CommandError, match="header Memoir-Command-Id is not valid UTF-8"):
        check_headers({"Memoir-Command-Id": "\udcff\udcfe"})
    with pytest.raises(CommandError, match=f"the limit is {MAX_HEADER_BYTES}"):
        check_headers({"X-Pad": "p" * MAX_HEADER_BYTES})
    with pytest.raises(CommandError, match="header Memoir-Command-Id must be 1-256 printable"):
        header_id({"Memoir-Command-Id": "a\x01b"}, "Memoir-Command-Id")


def test_a_trace_id_is_32_hex_digits() -> None:
    assert trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id("00-4bf92f3577b34da6a3ce929d0e0e47\x01\x02-00f067aa0ba902b7-01") is None
    assert trace_id("00-" + "\udcff" * 32 + "-00f067aa0ba902b7-01") is None
