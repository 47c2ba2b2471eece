"""A refusal is an answer, not a failure: a consumer catches it on `ctx.send` and the event is done
(never retried, never parked); one it lets escape is parked at once; a busy target is retried until it
takes the command, however many attempts that takes; a broken handler is parked after `max_attempts`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import ClassVar

import nats
import pytest
from support.reading import stream_messages
from support.waiting import eventually

from entities.social import Post, Profile, Published
from runtime import App, CommandError, SqliteJournal
from runtime.serve.service._service import Service
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.streams.consumer import Consumer, Context, is_refusal
from runtime.streams.handlers import on

pytestmark = pytest.mark.anyio


class Registrar(Consumer, name="registrar", sources=[Post]):
    """Registers each post's author. A second post by the same author is refused ("already
    registered"): posts `caught-*` handle that refusal, `uncaught-*` let it escape; `busy-*` find
    the target overloaded for twice `max_attempts` deliveries, `broken-*` fail with a bug."""

    max_attempts = 3
    backoff = 0.05
    attempts: ClassVar[Counter[str]] = Counter()
    refusals: ClassVar[list[str]] = []

    @on
    async def published(self, ctx: Context, e: Published) -> None:
        post = ctx.envelope.entity_id
        self.attempts[post] += 1
        if post.startswith("busy") and self.attempts[post] <= 2 * self.max_attempts:
            raise CommandError("overloaded", "the mailbox is full")
        if post.startswith("broken"):
            raise RuntimeError("a bug in the handler")
        try:
            await ctx.send("profile", e.author, "register", {"name": e.author})
        except CommandError as no:
            if post.startswith("uncaught"):
                raise
            self.refusals.append(f"{post}: {no.code}")


def test_refusals_and_transient_errors_are_told_apart() -> None:
    assert is_refusal(CommandError("rejected", "no stock"))
    assert is_refusal(CommandError("invalid", "units must be positive"))
    assert is_refusal(CommandError("not_found", "an entity's own code"))
    for transient in ("overloaded", "unavailable", "conflict", "internal"):
        assert not is_refusal(CommandError(transient, "try again"))
    assert not is_refusal(TimeoutError())
    assert not is_refusal(RuntimeError("a bug"))


async def test_a_caught_refusal_is_done_an_escaped_one_parked_at_once_a_transient_one_retried(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    Registrar.attempts = Counter()
    Registrar.refusals = []
    app = App("r", entities=[Post, Profile], consumers=[Registrar])
    async with SqliteJournal(tmp_path / "j.db") as journal, Service(app, journal, nats_url=nats_server.url) as svc:
        rt, runner = svc.runtime, svc.consumers["registrar"]

        async def post(post_id: str) -> None:
            await rt.ask("post", post_id, "publish", {"author": "ann", "text": "x"})

        async def registered() -> bool:
            return bool((await rt.ask("profile", "ann", "get")).result.name)

        await post("first")
        await eventually(registered, what="ann registered by her first post")
        for post_id in ("caught-1", "uncaught-1", "busy-1", "broken-1"):
            await post(post_id)
        await eventually(lambda: runner.handled == 3 and runner.dead_lettered == 2, 30, "three handled, two parked")

        assert Registrar.refusals == ["caught-1: rejected", "busy-1: rejected"]  # busy until it got its answer
        assert dict(Registrar.attempts) == {"first": 1, "caught-1": 1, "uncaught-1": 1, "busy-1": 7, "broken-1": 3}
        assert runner.refused == 1 and runner.retried == 6 + 2
        registrations = [e for e in await journal.read("profile", "ann") if e.name == "Registered"]
        assert [e.command_id for e in registrations] == ["post/first/1"]  # ids from the source event

    client = await nats.connect(nats_server.url)
    parked = await stream_messages(client.jetstream(), "MEMOIR_DEADLETTER")
    await client.close()
    errors = {m.headers["Memoir-Original-Subject"]: m.headers["Memoir-Error"] for m in parked}
    assert set(errors) == {"memoir.events.post.uncaught-1", "memoir.events.post.broken-1"}
    assert "already registered" in errors["memoir.events.post.uncaught-1"]
    assert "a bug in the handler" in errors["memoir.events.post.broken-1"]
