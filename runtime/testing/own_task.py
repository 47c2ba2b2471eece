"""An async context manager kept open by a task of its own, for test fixtures.

pytest-asyncio runs an async fixture's setup and its teardown as two separate tasks,
but a task group (every Runtime and Service holds one) must be exited by the task
that entered it — anyio refuses anything else. So the fixture's setup starts a task
that enters the context manager and then waits; the teardown tells that task to
leave and awaits it. The task is never left behind: `__aexit__` always joins it, and
an error raised while the context was open comes out there.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class InOwnTask(Generic[T]):
    """`async with InOwnTask(cm) as value:` is `async with cm as value:`, with cm entered and exited in one task."""

    def __init__(self, cm: AbstractAsyncContextManager[T], *, name: str = "memoir-own-task") -> None:
        self._cm = cm
        self._name = name
        self._leave = asyncio.Event()
        self._entered: asyncio.Future[T] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> T:
        entered = self._entered = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._keep(entered), name=self._name)
        try:
            return await asyncio.shield(entered)
        except BaseException:
            await self._join()  # entering failed, or we were cancelled meanwhile: nothing stays behind
            raise

    async def _keep(self, entered: asyncio.Future[T]) -> None:
        try:
            async with self._cm as value:
                entered.set_result(value)
                await self._leave.wait()
        except BaseException as exc:
            if entered.done():
                raise  # an error while open: whoever leaves sees it
            if isinstance(exc, asyncio.CancelledError):
                entered.cancel()
            else:
                entered.set_exception(exc)

    async def _join(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._entered is not None and not self._entered.done():
            task.cancel()  # still entering: stop it there rather than wait for it to finish
        self._leave.set()
        await task

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._join()
