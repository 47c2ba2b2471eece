"""What views and consumers share: where each entity type's events are, and one pull loop per source type."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio
from nats.aio.client import Client as NATS

from ..journal.base import Journal
from ..wire.protocol import stream_name
from ._pull import pull_loop

StreamResolver = Callable[[str], str]
"""Entity type -> the JetStream stream that carries its events."""


def event_streams(prefix: str, journal: Journal | None = None) -> StreamResolver:
    """The one answer to "which stream holds type T": the journal's own stream, else the outbox's."""

    def resolve(entity_type: str) -> str:
        own = journal.event_stream(entity_type) if journal is not None else None
        return own if own is not None else stream_name(prefix, entity_type)

    return resolve


class StreamRunner(abc.ABC):
    """Runs one subscriber (a view or a consumer) over the streams of its source entity types."""

    def __init__(
        self, owner: str, sources: Iterable[str], nc: NATS, *, prefix: str, streams: StreamResolver | None = None
    ) -> None:
        self.owner = owner
        self.sources = tuple(sources)
        self.nc = nc
        self.js = nc.jetstream()
        self.prefix = prefix
        self.streams = streams or event_streams(prefix)

    async def run(self) -> None:
        """Follow every source type until cancelled; one failing pull is retried inside its loop.

        What ends a source's loop (a handler's store away, `Unavailable`) is raised as itself, not
        in a group, so the supervisor that restarts transient failures knows it for one."""
        with sole_error():
            async with anyio.create_task_group() as tg:
                for entity_type in self.sources:
                    tg.start_soon(self._follow, entity_type)

    async def _follow(self, entity_type: str) -> None:
        await pull_loop(
            self.js,
            nc=self.nc,
            prefix=self.prefix,
            stream=self.streams(entity_type),
            entity_type=entity_type,
            owner=self.owner,
            **self.pull_options(entity_type),
        )

    @abc.abstractmethod
    def pull_options(self, entity_type: str) -> dict[str, Any]:
        """`pull_loop` keywords of this kind of subscriber: its handler, ack policy, batch, start."""


@contextlib.contextmanager
def sole_error() -> Iterator[None]:
    """A task group's one error raised as itself, not in a group: callers catch `JournalError`."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors: list[BaseException] = []
        pending: list[BaseException] = [group]
        while pending:
            e = pending.pop()
            if isinstance(e, BaseExceptionGroup):
                pending.extend(e.exceptions)
            else:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0] from group
        raise
