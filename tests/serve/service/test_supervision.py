"""The service's background tasks survive a passing outage and still stop on a bug."""

from __future__ import annotations

import pytest
from nats.js.errors import ServiceUnavailableError

from runtime.model.backoff import Backoff
from runtime.model.errors import Unavailable
from runtime.serve.service.supervision import supervised

pytestmark = pytest.mark.anyio


async def test_a_transient_failure_restarts_the_task_until_it_finishes() -> None:
    failures = [ServiceUnavailableError(), Unavailable("storage away"), TimeoutError()]
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        if failures:
            raise failures.pop(0)

    await supervised("timers.relay", work, retry=Backoff(0.001, cap=0.001))
    assert runs == 4 and failures == []


async def test_a_bug_is_not_retried() -> None:
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await supervised("publisher", work, retry=Backoff(0.001, cap=0.001))
    assert runs == 1
