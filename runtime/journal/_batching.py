"""Group commit: many callers, one writer, one transaction per batch.

Callers `submit` a request and wait for their own result; one loop takes every
request that arrived while the previous batch was being written and hands them
to `flush` together. Under load, batches grow by themselves, so one fsync
serves hundreds of commands while each still waits for its own durable write.
Under no load a request is flushed at once: there is no timer to wait out.

The futures are asyncio's: this is the hottest path in Memoir, anyio has no
lighter one-shot primitive, and nats-py ties us to the asyncio backend anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

from ..model.errors import JournalError

Req = TypeVar("Req")
Res = TypeVar("Res")

Flush = Callable[[list[Req]], Awaitable[list[Res | BaseException]]]


class Batcher(Generic[Req, Res]):
    def __init__(self, flush: Flush[Req, Res], *, max_batch: int = 4096, name: str = "batch") -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._name = name
        self._pending: list[tuple[Req, asyncio.Future[Res]]] = []
        self._wake = anyio.Event()
        self._closed = False
        self.batches = 0  # counters for metrics and benchmarks
        self.requests = 0
        self.sizes = [0] * 16  # batches by size: bucket i holds sizes up to 2**i

    async def submit(self, request: Req) -> Res:
        if self._closed:
            raise JournalError(f"{self._name}: the journal is closed")
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        self._wake.set()
        return await fut

    def close(self) -> None:
        """Refuse new requests; `run` flushes what is pending and returns."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                with anyio.CancelScope(shield=True):  # a started batch always finishes and answers
                    await self._flush_batch(batch)
            if self._closed:
                return

    async def _flush_batch(self, batch: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        self.batches += 1
        self.requests += len(batch)
        self.sizes[min((len(batch) - 1).bit_length(), 15)] += 1
        try:
            results = await self._flush([req for req, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            results = [exc] * len(batch)
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():  # the caller was cancelled; its write may still have landed
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)
