"""The seed's social example: posts, profiles that count their author's posts, and a view.

The "user profile" service keeps its own state consistent with the "social
post" service's stream: the `CountPosts` consumer turns each post event into a
command to the author's profile, with the event's id as the command id, so a
redelivered event is counted once. `PostsByAuthor` is a view over the same
stream.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from runtime import Consumer, Context, Effect, Envelope, EventSourcedEntity, Rows, View, applies, command, on

# -- post -------------------------------------------------------------------------------------


class Published(msgspec.Struct, frozen=True):
    author: str
    text: str


class Edited(msgspec.Struct, frozen=True):
    text: str


class Removed(msgspec.Struct, frozen=True):
    author: str


class PostState(msgspec.Struct, frozen=True):
    author: str = ""
    text: str = ""
    published: bool = False
    removed: bool = False
    edits: int = 0


MAX_TEXT = 10_000
# Constraints in the types: the decoder checks them, the schemas show them. Whitespace is spelled
# out (as in cart.py): `\S` means other characters to Python than to the schema's ECMA-262 readers.
BLANK = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
Author = Annotated[str, msgspec.Meta(pattern=f"[^{BLANK}]", description="not blank")]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


class Post(EventSourcedEntity[PostState], name="post"):
    initial = PostState()

    @command
    def publish(self, post: PostState, author: Author, text: Text) -> Effect[int]:
        if post.published:
            return self.error(f"post {self.entity_id} is already published")
        return self.persist(Published(author, text)).reply(lambda s: s.edits)

    @command
    def edit(self, post: PostState, text: str) -> Effect[int]:
        if not post.published or post.removed:
            return self.error(f"post {self.entity_id} is not published")
        return self.persist(Edited(text)).reply(lambda s: s.edits)

    @command
    def delete(self, post: PostState) -> Effect[None]:
        if not post.published or post.removed:
            return self.error(f"post {self.entity_id} is not published")
        return self.persist(Removed(post.author))

    @command
    def get(self, post: PostState) -> Effect[PostState]:
        return self.reply(post)

    @applies
    def published(self, post: PostState, e: Published) -> PostState:
        return PostState(author=e.author, text=e.text, published=True)

    @applies
    def edited(self, post: PostState, e: Edited) -> PostState:
        return msgspec.structs.replace(post, text=e.text, edits=post.edits + 1)

    @applies
    def removed(self, post: PostState, e: Removed) -> PostState:
        return msgspec.structs.replace(post, removed=True)


# -- profile ----------------------------------------------------------------------------------


class Registered(msgspec.Struct, frozen=True):
    name: str


class PostCounted(msgspec.Struct, frozen=True):
    post_id: str


class PostUncounted(msgspec.Struct, frozen=True):
    post_id: str


class ProfileState(msgspec.Struct, frozen=True):
    name: str | None = None
    posts: int = 0


class Profile(EventSourcedEntity[ProfileState], name="profile"):
    initial = ProfileState()

    @command
    def register(self, profile: ProfileState, name: str) -> Effect[ProfileState]:
        if profile.name is not None:
            return self.error(f"profile {self.entity_id} is already registered")
        return self.persist(Registered(name)).reply(lambda s: s)

    @command
    def count_post(self, profile: ProfileState, post_id: str) -> Effect[int]:
        return self.persist(PostCounted(post_id)).reply(lambda s: s.posts)

    @command
    def uncount_post(self, profile: ProfileState, post_id: str) -> Effect[int]:
        return self.persist(PostUncounted(post_id)).reply(lambda s: s.posts)

    @command
    def get(self, profile: ProfileState) -> Effect[ProfileState]:
        return self.reply(profile)

    @applies
    def registered(self, profile: ProfileState, e: Registered) -> ProfileState:
        return msgspec.structs.replace(profile, name=e.name)

    @applies
    def counted(self, profile: ProfileState, e: PostCounted) -> ProfileState:
        return msgspec.structs.replace(profile, posts=profile.posts + 1)

    @applies
    def uncounted(self, profile: ProfileState, e: PostUncounted) -> ProfileState:
        return msgspec.structs.replace(profile, posts=profile.posts - 1)


# -- the profile service's consumer of post events, and a view ---------------------------------


class CountPosts(Consumer, name="count_posts", sources=[Post]):
    @on
    async def published(self, ctx: Context, e: Published) -> None:
        await ctx.send("profile", e.author, "count_post", {"post_id": ctx.envelope.entity_id})

    @on
    async def removed(self, ctx: Context, e: Removed) -> None:
        await ctx.send("profile", e.author, "uncount_post", {"post_id": ctx.envelope.entity_id})


class AuthorPosts(msgspec.Struct):
    author: str
    posts: int = 0
    latest: str | None = None  # id of the latest post published


class PostsByAuthor(View[AuthorPosts], name="posts_by_author", sources=[Post]):
    @on
    def published(self, rows: Rows[AuthorPosts], e: Published, env: Envelope) -> None:
        row = rows.get(e.author) or AuthorPosts(e.author)
        rows.put(e.author, AuthorPosts(e.author, row.posts + 1, env.entity_id))

    @on
    def removed(self, rows: Rows[AuthorPosts], e: Removed) -> None:
        row = rows.get(e.author) or AuthorPosts(e.author)
        rows.put(e.author, msgspec.structs.replace(row, posts=row.posts - 1))
