"""Process tuning for a long-running runtime: process-wide settings, so never applied implicitly.

`memoir run` calls both; an application embedding the runtime can call them once after start-up.

`tune_gc`: CPython's cyclic collector runs a young-generation pass every 700 allocations
and, every so often, a full pass over every live object. A runtime holds up to
`max_live_actors` actors with their states and command-id tables, so those full passes
grow with the number of entities and land on random commands as latency spikes. Freezing
what exists after start-up and collecting far less often keeps the collector for what it
is for (cycles), not for scanning actors.

`tune_nats`: nats-py (2.16) parses every received message's headers with a generator
over each header name's characters, which is half the cost of reading an event from a
stream (each carries seven headers). This swaps in a parser with the same results that
does the same checks per name, not per character; tests/serve/process/test_tuning.py holds it to the
original on ordinary and malformed header blocks. It does nothing if nats-py's parser is
not where it was. Memoir's own connections (`wire.nats.connect`) need none of this: they are
`GuardedClient`s, with a parser of their own that also keeps a value's bad bytes visible.
"""

from __future__ import annotations

import gc

_CRLF = b"\r\n"


def tune_gc(young: int = 50_000) -> None:
    """Freeze what start-up allocated and collect young objects less often: fewer pauses under load."""
    gc.collect()
    gc.freeze()  # everything alive now (imports, the app, connections) is never scanned again
    gc.set_threshold(young, 50, 100)


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's `Client._parse_header_lines`, one check per header name instead of per character."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:  # also the empty line
            continue
        stripped = name.strip()
        if not stripped.isascii():  # nats-py: a name that is not ASCII is skipped
            continue
        key = stripped.decode("ascii")
        if key and key.split() != [key]:  # nats-py: a name with whitespace inside is skipped
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def tune_nats() -> bool:
    """Use `parse_header_lines` in nats-py; True if it was applied."""
    from nats.aio.client import Client

    current = Client.__dict__.get("_parse_header_lines")
    if not isinstance(current, staticmethod):
        return False
    Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]
    return True
