"""The pipelined group commit (runtime/journal/_batching.py `PipelinedBatcher`): up to `in_flight`
batches at once, never one key in two of them, one key's requests flushed in the order they came,
every request answered with its own result, and a close drains what is queued."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from runtime.journal._batching import PipelinedBatcher
from runtime.model.errors import JournalError

pytestmark = pytest.mark.anyio

Req = tuple[str, int]  # (key, n-th request of that key)


class Store:
    """A flush that holds each batch until the test lets it go, and records what it saw."""

    def __init__(self) -> None:
        self.in_flight: list[list[Req]] = []
        self.most_in_flight = 0
        self.flushed: list[Req] = []
        self.release = anyio.Event()

    async def flush(self, batch: list[Req]) -> list[str | BaseException]:
        for other in self.in_flight:
            assert not {k for k, _ in batch} & {k for k, _ in other}, "one key in two batches in flight"
        self.in_flight.append(batch)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        try:
            await self.release.wait()
        finally:
            self.in_flight.remove(batch)
        self.flushed.extend(batch)
        return [ValueError(k) if k == "bad" else f"{k}:{n}" for k, n in batch]


async def test_two_batches_in_flight_no_key_in_both_each_keys_order_kept() -> None:
    store = Store()
    batcher: PipelinedBatcher[Req, str] = PipelinedBatcher(
        store.flush, key=lambda r: r[0], in_flight=2, max_batch=3, name="test"
    )
    results: dict[Req, object] = {}

    async def ask(req: Req) -> None:
        try:
            results[req] = await batcher.submit(req)
        except ValueError as exc:
            results[req] = exc

    keys = ["a", "b", "c", "a", "d", "a", "b", "bad", "e", "f", "a"]
    counts: dict[str, int] = {}
    requests: list[Req] = []
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
        requests.append((k, counts[k]))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(batcher.run)
            for req in requests:
                tg.start_soon(ask, req)
            for _ in range(100_000):  # and the deadline above
                if len(results) == len(requests):
                    break
                await anyio.lowlevel.checkpoint()
                if store.in_flight and (len(store.in_flight) == 2 or not batcher._pending):
                    store.release.set()  # let these go (both, when two are in flight)
                    store.release = anyio.Event()
            batcher.close()
    assert store.most_in_flight == 2
    for req in requests:
        if req[0] == "bad":
            assert isinstance(results[req], ValueError)
        else:
            assert results[req] == f"{req[0]}:{req[1]}", "each request has its own result"
    for k in counts:
        assert [n for key, n in store.flushed if key == k] == list(range(1, counts[k] + 1)), f"{k} in order"
    with pytest.raises(JournalError):
        batcher.submit(("late", 1))


async def test_close_writes_what_is_queued_then_run_returns() -> None:
    seen: list[Req] = []

    async def flush(batch: list[Req]) -> list[str | BaseException]:
        await anyio.lowlevel.checkpoint()
        seen.extend(batch)
        return ["ok"] * len(batch)

    batcher: PipelinedBatcher[Req, str] = PipelinedBatcher(flush, key=lambda r: r[0], in_flight=2, max_batch=2)
    futures = [batcher.submit((k, 1)) for k in "abcde"] + [batcher.submit(("a", 2))]
    batcher.close()
    with anyio.fail_after(20):
        await batcher.run()
    assert [f.result() for f in futures] == ["ok"] * 6
    assert seen.index(("a", 1)) < seen.index(("a", 2))
