"""An app with a view queried by declared fields, for the live-query cluster test
(`memoir run tests.cluster.live_app:app`). It imports nothing from the tests."""

from __future__ import annotations

from entities import Post, PostsByAuthor, Profile
from runtime import App


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", "author"]):
    """The example's view, queried by its count of posts."""


app = App("livequeries", entities=[Post, Profile], views=[Authors])
