"""ViewTestKit and ConsumerTestKit: given events, then the rows or the commands sent — no I/O."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from entities.social import (
    AuthorPosts,
    CountPosts,
    Edited,
    Post,
    PostsByAuthor,
    Profile,
    Published,
    Registered,
    Removed,
)
from runtime import CommandError, ConfigError, Consumer, Context, Envelope, Rejected, Rows, View, on
from runtime.testing import ConsumerTestKit, SentCommand, ViewTestKit

pytestmark = pytest.mark.anyio


# -- views ---------------------------------------------------------------------------------------


def test_a_view_kit_applies_events_in_order_and_queries_like_the_store() -> None:
    kit = ViewTestKit(PostsByAuthor)
    kit.given(Published("ann", "a"), entity_id="p1").given(Published("bob", "b"), entity_id="p2")
    kit.given(Published("ann", "c"), entity_id="p3")
    kit.given(Removed("ann"), entity_id="p1")
    assert kit.get("ann") == AuthorPosts("ann", 1, "p3")  # the envelope's entity id reached the handler
    assert kit.get("nobody") is None
    assert kit.scan() == [("ann", AuthorPosts("ann", 1, "p3")), ("bob", AuthorPosts("bob", 1, "p2"))]
    assert kit.scan(after="ann", limit=5) == [("bob", AuthorPosts("bob", 1, "p2"))]
    assert kit.scan(limit=1) == [("ann", AuthorPosts("ann", 1, "p3"))]
    assert kit.rows == dict(kit.scan())
    assert kit.applied == 4


def test_a_view_kit_skips_events_the_view_does_not_handle() -> None:
    kit = ViewTestKit(PostsByAuthor).given(Published("ann", "a"), Edited("changed"), entity_id="p1")
    assert kit.applied == 1 and kit.rows == {"ann": AuthorPosts("ann", 1, "p1")}


def test_a_view_kit_takes_envelopes_with_their_metadata() -> None:
    kit = ViewTestKit(PostsByAuthor)
    env = kit.envelope(Published("ann", "a"), entity_id="p7", correlation_id="req-1")
    assert (env.entity_type, env.entity_id, env.seq, env.position, env.correlation_id) == ("post", "p7", 1, 1, "req-1")
    later = kit.envelope(Published("ann", "b"), entity_id="p7", recorded_at=5, command_id="c-2")
    assert (later.seq, later.position, later.recorded_at, later.command_id) == (2, 2, 5, "c-2")
    kit.given(env)
    assert kit.get("ann") == AuthorPosts("ann", 1, "p7")


def test_a_view_kit_refuses_events_of_entities_the_view_does_not_follow() -> None:
    kit = ViewTestKit(PostsByAuthor)
    with pytest.raises(
        ConfigError, match=r"PostsByAuthor: Registered is not an event of any of its sources \['post'\]"
    ):
        kit.given(Registered("ann"))
    stranger = Envelope(
        entity_type="profile", entity_id="ann", seq=1, name="Registered", version=1, payload=b"{}", recorded_at=0
    )
    with pytest.raises(ConfigError, match="PostsByAuthor does not follow 'profile'"):
        kit.given(stranger)
    assert kit.rows == {}


class Tally(msgspec.Struct):
    count: int = 0


class Forgetful(View[Tally], name="forgetful", sources=[Post]):
    """Mutates the row it read without `put`: the runner would never store it."""

    @on
    def published(self, rows: Rows[Tally], e: Published) -> None:
        row = rows.get("all")
        if row is None:
            rows.put("all", Tally(1))
        else:
            row.count += 1


def test_a_view_kit_stores_only_what_a_handler_puts_as_the_store_would() -> None:
    kit = ViewTestKit(Forgetful).given(Published("ann", "a"), Published("ann", "b"), Published("ann", "c"))
    assert kit.get("all") == Tally(1)  # the in-place changes were lost, as they would be in production


class Odd(msgspec.Struct):
    when: float


class Lossy(View[Odd], name="lossy", sources=[Post]):
    @on
    def published(self, rows: Rows[Odd], e: Published) -> None:
        rows.put("x", Odd(float("nan")))  # JSON has no NaN: msgspec writes null, which is no float


def test_a_view_kit_fails_on_a_row_that_does_not_survive_its_codec() -> None:
    with pytest.raises(msgspec.ValidationError, match="Expected `float`, got `null`"):
        ViewTestKit(Lossy).given(Published("ann", "a"))


# -- consumers -----------------------------------------------------------------------------------


def test_a_consumer_kit_records_the_commands_with_the_runtimes_ids() -> None:
    kit = ConsumerTestKit(CountPosts)
    first = kit.given(Published("ann", "a"), entity_id="p1")
    assert first == [
        SentCommand(
            "profile",
            "ann",
            "count_post",
            {"post_id": "p1"},
            command_id="post/p1/1",
            correlation_id="post/p1/1",
            causation_id="post/p1/1",
        )
    ]
    later = kit.given(Edited("x"), Removed("ann"), entity_id="p1")  # Edited: no handler, no command
    assert later == [SentCommand("profile", "ann", "uncount_post", {"post_id": "p1"}, command_id="post/p1/3")]
    assert kit.sent == first + later


def test_a_consumer_kit_keeps_the_correlation_id_of_the_event() -> None:
    kit = ConsumerTestKit(CountPosts)
    (sent,) = kit.given(kit.envelope(Published("ann", "a"), entity_id="p1", correlation_id="checkout-9"))
    assert (sent.command_id, sent.correlation_id, sent.causation_id) == ("post/p1/1", "checkout-9", "post/p1/1")


class Gift(msgspec.Struct):
    post_id: str


class FanOut(Consumer, name="fan_out", sources=[Post]):
    """Two commands to one entity for one event, and a Struct as arguments."""

    @on
    async def published(self, ctx: Context, e: Published, env: Envelope) -> None:
        await ctx.send("profile", e.author, "count_post", Gift(env.entity_id))
        reply = await ctx.send("profile", e.author, "count_post", {"post_id": env.entity_id + "-again"})
        await ctx.send("profile", f"fan-of-{e.author}", "register", {"name": str(reply.result)})


def test_a_second_command_to_one_entity_gets_its_own_id_and_struct_args_become_json() -> None:
    kit = ConsumerTestKit(FanOut, respond=lambda sent: sent.args.get("post_id", "").upper())
    assert kit.given(Published("ann", "a"), entity_id="p1") == [
        SentCommand("profile", "ann", "count_post", {"post_id": "p1"}, command_id="post/p1/1"),
        SentCommand("profile", "ann", "count_post", {"post_id": "p1-again"}, command_id="post/p1/1#2"),
        SentCommand("profile", "fan-of-ann", "register", {"name": "P1-AGAIN"}, command_id="post/p1/1"),
    ]


def test_a_responder_that_raises_fails_the_handler_as_a_rejection_would() -> None:
    def refuse(sent: SentCommand) -> None:
        raise Rejected("rejected", f"{sent.entity_id} is closed")

    kit = ConsumerTestKit(CountPosts, respond=refuse)
    with pytest.raises(Rejected, match="ann is closed"):
        kit.given(Published("ann", "a"), entity_id="p1")
    assert len(kit.sent) == 1  # it was sent; the handler then failed


def test_sent_commands_match_on_every_field_given() -> None:
    full = SentCommand("profile", "ann", "count_post", {"post_id": "p1"}, "post/p1/1", "c", "post/p1/1")
    assert full == SentCommand("profile", "ann", "count_post", {"post_id": "p1"})
    assert full != SentCommand("profile", "ann", "count_post", {"post_id": "p1"}, command_id="post/p1/2")
    assert full != SentCommand("profile", "bob", "count_post", {"post_id": "p1"})
    assert full != SentCommand("profile", "ann", "count_post", {"post_id": "p2"})
    assert full != ("profile", "ann")


class Slow(Consumer, name="slow", sources=[Post]):
    @on
    async def published(self, ctx: Context, e: Published) -> None:
        await asyncio.sleep(0)  # a real suspension: the synchronous `given` cannot drive it
        await ctx.send("profile", e.author, "count_post", {"post_id": ctx.envelope.entity_id})


def test_given_refuses_a_handler_that_awaits_real_io() -> None:
    with pytest.raises(RuntimeError, match="given_async"):
        ConsumerTestKit(Slow).given(Published("ann", "a"))


async def test_given_async_runs_a_handler_that_awaits_real_io() -> None:
    sent = await ConsumerTestKit(Slow).given_async(Published("ann", "a"), entity_id="p1")
    assert sent == [SentCommand("profile", "ann", "count_post", {"post_id": "p1"}, command_id="post/p1/1")]


class Typo(Consumer, name="typo", sources=[Post]):
    @on
    async def published(self, ctx: Context, e: Published) -> None:
        await ctx.send("profile", e.author, "count_posts", {"post_id": ctx.envelope.entity_id})


class WrongArgs(Consumer, name="wrong_args", sources=[Post]):
    @on
    async def published(self, ctx: Context, e: Published) -> None:
        await ctx.send("profile", e.author, "count_post", {"post": ctx.envelope.entity_id})


def test_commands_to_targets_are_checked_as_the_runtime_checks_them() -> None:
    with pytest.raises(CommandError, match="entity type 'profile' has no command 'count_posts'") as typo:
        ConsumerTestKit(Typo, targets=[Profile]).given(Published("ann", "a"))
    assert typo.value.code == "unknown_command"
    with pytest.raises(CommandError, match=r"profile.count_post: Object contains unknown field `post`") as bad:
        ConsumerTestKit(WrongArgs, targets=[Profile]).given(Published("ann", "a"))
    assert bad.value.code == "invalid"
    assert ConsumerTestKit(CountPosts, targets=[Profile]).given(Published("ann", "a"), entity_id="p1") == [
        SentCommand("profile", "ann", "count_post", {"post_id": "p1"})
    ]
    assert len(ConsumerTestKit(Typo).given(Published("ann", "a"))) == 1  # no targets: nothing is checked
