"""A Python client for the NATS command protocol (`wire.protocol`); it needs NATS, not the engine.

```python
async with Client("nats://127.0.0.1:4222") as client:
    reply = await client.send("inventory", "XYZ-1", "receive", {"units": 5, "on": "2022-03-01"},
                              command_id="order-17/line-2")
    reply.result, reply.seq
```

Errors come back as the typed subclasses of CommandError (`Rejected`,
`Invalid`, `Overloaded`, …), so callers branch with `except`. Each request tells
the runtime how long it waits (`Memoir-Timeout-Ms`), so a command still queued
when the client gives up is dropped instead of running late. A bearer token
(`Client(..., token=jwt)`, or `send(..., token=jwt)` for one command) goes in the
`Authorization` header: the runtime verifies it and records its subject with the events.

In a cluster the client follows the shard map (`shard_map.py`) and sends each command to
its owner's own subject, so it takes no forwarding hop; a stale map costs a hop, and a
member gone is forgotten and the command resent (same command id) to the shared subject.
`Client(..., direct=False)` sends everything to the shared subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ...model.errors import ErrorCode, MemoirError, Overloaded
from ...wire import tracing
from ...wire.auth import NatsAuth
from ...wire.nats import connect
from ...wire.protocol import (
    H_AUTHORIZATION,
    H_TRACEPARENT,
    Answer,
    Reply,
    check_prefix,
    command_headers,
    command_subject,
    decode_answer,
    encode_args,
)
from .shard_map import ShardMap


class NotServing(Overloaded):
    """NATS answered at once that nobody subscribes to the subject: no runtime serves this prefix there."""


class Client:
    """Sends commands and queries to Memoir runtimes over NATS. Use as `async with Client(url) as client:`."""

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        nc: NATS | None = None,
        prefix: str = "memoir",
        auth: NatsAuth | None = None,
        token: str | None = None,
        direct: bool = True,
    ) -> None:
        if (nats_url is None) == (nc is None):
            raise ValueError("give exactly one of nats_url and nc")
        self.token = token
        self.nats_url = nats_url
        self.auth = auth  # credentials and TLS for nats_url (NatsAuth.from_env() reads MEMOIR_NATS_*)
        self.nc = nc
        self._owns = nc is None
        self.prefix = check_prefix(prefix)
        self.direct = direct
        self.shard_map: ShardMap | None = None  # followed from `__aenter__` when `direct`

    async def __aenter__(self) -> Self:
        if self.nc is None:
            assert self.nats_url is not None
            self.nc = await connect(self.nats_url, auth=self.auth)
        if self.direct:
            self.shard_map = await ShardMap.follow(self.nc, self.prefix)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        shard_map, self.shard_map = self.shard_map, None
        if shard_map is not None:
            with anyio.move_on_after(5, shield=True):
                await shard_map.close()
        if self._owns and self.nc is not None:
            nc, self.nc = self.nc, None
            # Shielded: a client leaving a cancelled task group still closes its socket.
            with anyio.move_on_after(5, shield=True):
                await nc.close()

    def subject(self, entity_type: str, entity_id: str, command: str) -> str:
        return command_subject(self.prefix, entity_type, entity_id, command)

    async def send(
        self,
        entity_type: str,
        entity_id: str,
        command: str,
        args: Mapping[str, Any] | msgspec.Struct | bytes | None = None,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float = 5.0,
        token: str | None = None,
    ) -> Reply:
        """Send one command and wait for its reply; raises the typed CommandError on failure.

        `token` (a JWT) overrides the client's own for this command.
        """
        payload = encode_args(args)
        headers = command_headers(command_id, correlation_id, timeout)
        if (bearer := token or self.token) is not None:
            headers = {**(headers or {}), H_AUTHORIZATION: f"Bearer {bearer}"}
        subject, what = self.subject(entity_type, entity_id, command), f"{entity_type}/{entity_id} {command}"
        if tracing.tracer() is None:  # off: nothing more than this check
            answer = await self._routed(entity_type, entity_id, subject, payload, timeout, headers, what)
            return Reply(answer.result, answer.seq, answer.duplicate)
        attributes = {"memoir.entity_type": entity_type, "memoir.entity_id": entity_id, "memoir.command": command}
        with tracing.span(f"send {entity_type}.{command}", kind=tracing.CLIENT, attributes=attributes):
            if (parent := tracing.traceparent()) is not None:  # the member's spans continue this one
                headers = {**(headers or {}), H_TRACEPARENT: parent}
            answer = await self._routed(entity_type, entity_id, subject, payload, timeout, headers, what)
        return Reply(answer.result, answer.seq, answer.duplicate)

    async def _routed(
        self,
        entity_type: str,
        entity_id: str,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None,
        what: str,
    ) -> Answer:
        """To the owner's own subject where the map names one; a member gone is forgotten and the
        command resent to the shared subject (same headers, so the same command id) at once."""
        direct = None if self.shard_map is None else self.shard_map.subject(entity_type, entity_id, subject)
        if direct is not None:
            try:
                return await self.request(direct, payload, timeout=timeout, headers=headers, what=what)
            except NotServing:  # answered at once: nothing ran, nothing waited
                assert self.shard_map is not None
                self.shard_map.forget(direct)
        return await self.request(subject, payload, timeout=timeout, headers=headers, what=what)

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        what: str | None = None,
    ) -> Answer:
        """One request in the protocol's reply envelope (commands, view queries, admin); raises its error."""
        if self.nc is None:
            raise MemoirError("the client is not connected: use `async with Client(...)`")
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
        except NoRespondersError:
            raise NotServing(
                ErrorCode.OVERLOADED, f"no Memoir runtime is serving {subject} on this NATS (is `memoir run` up?)"
            ) from None
        except NatsTimeoutError:
            raise TimeoutError(f"no reply to {what or subject} within {timeout}s") from None
        try:
            answer = decode_answer(msg.data)
        except ValueError as exc:
            raise MemoirError(str(exc)) from None
        answer.raise_for_error()
        return answer
