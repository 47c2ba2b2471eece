"""One log line per command served, at a level of its own: `command`.

Off by default (`memoir run --log-commands`, or MEMOIR_LOG_COMMANDS=1): a busy runtime serves tens
of thousands of commands a second, and when it is off the NATS door pays one `is None` check.
On, each command the door answers (the owner's, in a cluster: a member that only forwarded it
writes nothing) is a line with its entity type and id, command, command id, outcome code (`ok`
or the error's), duration in milliseconds, the entity's seq after it, and the trace id (the
W3C `traceparent`'s, else the correlation id). The level is not one of the standard ones, so
`--log-level` neither hides these lines nor is needed to see them; a log pipeline selects them
by `level == "command"`. They go through structlog's configured processors (the same format).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from ...wire.protocol import H_COMMAND_ID, H_CORRELATION_ID, H_TRACEPARENT, trace_id

LEVEL = "command"


class _CommandLogger(structlog.BoundLoggerBase):
    """A bound logger with one method, `command`, that no level filter stands in front of."""

    def command(self, event: str, **kw: Any) -> None:
        args, kwargs = self._process_event(LEVEL, event, kw)
        self._logger.msg(*args, **kwargs)


class CommandLog:
    """Writes the line for each command; made after logging is configured (`process/logs.py`)."""

    def __init__(self) -> None:
        config = structlog.get_config()
        self._log = _CommandLogger(config["logger_factory"](), processors=config["processors"], context={})

    def served(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        headers: Mapping[str, str] | None,
        outcome: str,
        seconds: float,
        seq: int | None,
    ) -> None:
        h = headers or {}
        self._log.command(
            "command",
            entity_type=entity_type,
            entity_id=entity_id,
            command=command,
            command_id=h.get(H_COMMAND_ID),
            outcome=outcome,
            ms=round(seconds * 1000, 3),
            seq=seq,
            trace_id=trace_id(h.get(H_TRACEPARENT)) or h.get(H_CORRELATION_ID),
        )
