"""A Python client for the NATS command protocol.

```python
async with Client("nats://127.0.0.1:4222") as client:
    reply = await client.send("inventory", "XYZ-1", "receive", {"units": 5, "on": "2022-03-01"},
                              command_id="order-17/line-2")
    reply.result, reply.seq
```

Errors come back as the typed subclasses of CommandError (`Rejected`,
`Invalid`, `Overloaded`, …), so callers branch with `except`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ..engine.actor import Reply
from ..model.errors import CommandError, ErrorCode, MemoirError, command_error
from ..wire.nats import connect
from ..wire.protocol import check_prefix, token
from .transport import H_COMMAND_ID, H_CORRELATION_ID


class _Error(msgspec.Struct):
    code: str
    message: str
    details: Any = None


class _Answer(msgspec.Struct):
    ok: bool
    result: Any = None
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decoder = msgspec.json.Decoder(_Answer)
_encoder = msgspec.json.Encoder()


class Client:
    def __init__(self, nats_url: str | None = None, *, nc: NATS | None = None, prefix: str = "memoir") -> None:
        if (nats_url is None) == (nc is None):
            raise ValueError("give exactly one of nats_url and nc")
        self.nats_url = nats_url
        self.nc = nc
        self._owns = nc is None
        self.prefix = check_prefix(prefix)

    async def __aenter__(self) -> Self:
        if self.nc is None:
            assert self.nats_url is not None
            self.nc = await connect(self.nats_url)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._owns and self.nc is not None:
            await self.nc.close()
            self.nc = None

    def subject(self, entity_type: str, entity_id: str, command: str) -> str:
        return f"{self.prefix}.cmd.{entity_type}.{token(entity_id)}.{command}"

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
    ) -> Reply:
        """Send one command and wait for its reply; raises the typed CommandError on failure."""
        assert self.nc is not None, "use `async with Client(...)`"
        payload = args if isinstance(args, bytes) else _encoder.encode(args if args is not None else {})
        headers = {}
        if command_id is not None:
            headers[H_COMMAND_ID] = command_id
        if correlation_id is not None:
            headers[H_CORRELATION_ID] = correlation_id
        try:
            msg = await self.nc.request(
                self.subject(entity_type, entity_id, command), payload, timeout=timeout, headers=headers or None
            )
        except NoRespondersError:
            raise CommandError(ErrorCode.OVERLOADED, "no Memoir runtime is serving commands on this NATS") from None
        except NatsTimeoutError:
            raise TimeoutError(f"no reply to {entity_type}/{entity_id} {command} within {timeout}s") from None
        try:
            answer = _decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise MemoirError(f"unreadable reply {msg.data[:200]!r}: {exc}") from exc
        if answer.ok:
            return Reply(answer.result, answer.seq, answer.duplicate)
        err = answer.error or _Error("internal", "error reply without an error")
        raise command_error(err.code, err.message, err.details)
