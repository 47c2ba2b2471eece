"""renewer.OnThread: a stop ends the thread even when its body swallows a cancel, as Python
3.11's `asyncio.wait_for` can when the awaited result arrives with the cancel (CPython
gh-86296). A lease thread that outlived its stop kept renewing the member's lease and held the
member's shutdown forever."""

from __future__ import annotations

import asyncio
import threading

import anyio
import nats
import pytest

from runtime.serve.service.cluster.renewer import OnThread

from .natscluster import NatsCluster

pytestmark = pytest.mark.anyio


async def test_a_stop_ends_the_thread_even_when_its_body_swallows_the_first_cancel(
    nats_cluster: NatsCluster,
) -> None:
    started, swallowed = threading.Event(), threading.Event()

    async def body(_: nats.NATS) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # and carry on, as a cancel lost in wait_for does
        await asyncio.sleep(3600)

    async def stopped_after_start() -> None:
        thread = OnThread(lambda: nats.connect(nats_cluster.urls[0]), "memoir-test-swallow", connect_timeout=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(thread.run, body)
            await anyio.to_thread.run_sync(started.wait, 10)
            thread.stop()

    # on a loop of its own, abandoned if it never returns: the test fails rather than hangs
    with anyio.fail_after(30):
        await anyio.to_thread.run_sync(lambda: asyncio.run(stopped_after_start()), abandon_on_cancel=True)
    assert swallowed.is_set()
