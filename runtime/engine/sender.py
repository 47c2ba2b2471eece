"""How anything inside a member sends a command: one `Sender`, whoever owns the entity.

Consumers, timers and workflow steps are handed a `Sender` rather than a runtime, so none of
them can reach a local actor for an entity this process may not own. Alone, the `Runtime`
itself is the sender (it has this `ask`). In a cluster the service gives them one that runs
the command here when this member owns the entity and otherwise forwards it to the owner, as
the NATS door does for a client (serve/service/forwarding.py): `Moved` never reaches them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from ..model.access import Caller
from ..wire.protocol import Reply


class Sender(Protocol):
    """Sends one command to an entity and waits for its reply; raises `CommandError` with a wire code.

    `deadline` (a `time.monotonic()` value) bounds the wait and drops the command unrun if its
    turn comes later; `caller` None means from inside the process (trusted).
    """

    async def ask(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: bytes | Mapping[str, Any] | msgspec.Struct | None = None,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        deadline: float | None = None,
        caller: Caller | None = None,
    ) -> Reply: ...
