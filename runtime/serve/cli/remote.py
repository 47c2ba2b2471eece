"""What the commands that talk to a running runtime share: a connection, and its errors as the CLI's."""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import msgspec

from ...wire.nats import redact
from ..service.client import Client, NotServing
from .outcome import Failure, unreachable
from .target import Target


class Connected:
    """A Client on a NATS connection made with the CLI's timeout and errors."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.target, self.timeout = target, args.timeout
        self.client: Client | None = None

    async def __aenter__(self) -> Client:
        nc, _ = await self.target.connect(self.timeout)
        self.client = Client(nc=nc, prefix=self.target.settings.prefix)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None and self.client.nc is not None
        with anyio.move_on_after(5, shield=True):
            await self.client.nc.close()


async def asking(target: Target, request: Any) -> Any:
    """Await a request, turning "nobody serves it" and "no answer in time" into the CLI's errors."""
    try:
        return await request
    except NotServing:
        raise unreachable(
            f"no Memoir runtime is serving {target.settings.prefix}.* on {redact(target.nats_url())}"
            f" (is `memoir run` running with data dir {target.data} and prefix {target.settings.prefix}?)"
        ) from None
    except TimeoutError as exc:
        raise Failure("timeout", f"{exc} (the runtime is up but did not answer in time)") from None


async def request(
    args: argparse.Namespace, target: Target, subject: str, payload: dict[str, Any], *, at_least: float = 0.0
) -> Any:
    """One request to the runtime's protocol; its result. `at_least`: the seconds an operation that
    answers once its work is done (a view's reset, a dead-letter replay) may take, whatever
    `--timeout` says."""
    async with Connected(target, args) as client:
        asked = client.request(subject, msgspec.json.encode(payload), timeout=max(args.timeout, at_least))
        answer = await asking(target, asked)
    return answer.result
