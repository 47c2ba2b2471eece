"""Waiting for the eventually-consistent parts of a service: the outbox, views and consumers.

A command's reply means its events are in the journal; the publisher, the views and
the consumers follow a moment later. A test that reads a view or a consumer's effect
waits for them first — bounded, and when the time is up the failure says who is behind
and by how much, as Akka's and Kalix's testkits do.
"""

from __future__ import annotations

import anyio
from nats.js.errors import NotFoundError

from ..serve.service._service import Service
from ..streams._pull import consumer_name
from ..streams._runner import StreamRunner


async def caught_up(service: Service, *names: str, timeout: float = 10.0) -> None:
    """Wait until the named views and consumers (all by default) have handled every event in the journal.

    That is: the outbox has published everything appended so far, and each subscriber has
    handled (and acknowledged) every message of its source streams. Consumers send commands
    that append more events, so a round counts only if the journal did not grow meanwhile.
    Raises AssertionError naming who is behind, with their positions, after `timeout` seconds.
    """
    runners = _runners(service, names)
    behind: list[str] = []
    with anyio.move_on_after(timeout):
        while True:
            head = await service.journal.last_position()
            behind = await _behind(service, runners, head)
            if not behind and await service.journal.last_position() == head:
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"not caught up after {timeout}s: " + "; ".join(behind or ["the journal kept growing"]))


def _runners(service: Service, names: tuple[str, ...]) -> dict[str, StreamRunner]:
    every: dict[str, StreamRunner] = {f"view {n}": r for n, r in service.views.items()}
    every.update({f"consumer {n}": r for n, r in service.consumers.items()})
    if not names:
        return every
    picked: dict[str, StreamRunner] = {}
    for name in names:
        found = [k for k in (f"view {name}", f"consumer {name}") if k in every]
        if not found:
            known = sorted(service.views) + sorted(service.consumers)
            raise KeyError(f"no view or consumer {name!r} in this service (known: {known})")
        picked.update({k: every[k] for k in found})
    return picked


async def _behind(service: Service, runners: dict[str, StreamRunner], head: int) -> list[str]:
    """Who is behind `head` (the journal's last position), each with where it is; empty when no one is."""
    out: list[str] = []
    publisher = service.publisher
    if publisher is not None and publisher.checkpoint < head:
        out.append(f"publisher at position {publisher.checkpoint} of the journal's {head}")
        return out  # subscribers cannot be judged before their streams hold everything
    if service.nc is None:
        return ["the service is not running"]
    js = service.nc.jetstream()
    for label, runner in runners.items():
        for entity_type in runner.sources:
            stream = service.stream_for(entity_type)
            try:
                info = await js.consumer_info(stream, consumer_name(runner.owner, entity_type))
            except NotFoundError:
                out.append(f"{label} has not started on {stream} yet")
                continue
            if info.num_pending or info.num_ack_pending:
                delivered = info.delivered.stream_seq if info.delivered else 0
                out.append(
                    f"{label} on {entity_type} events: {info.num_pending} not delivered,"
                    f" {info.num_ack_pending} not acknowledged (delivered up to stream seq {delivered})"
                )
    return out
