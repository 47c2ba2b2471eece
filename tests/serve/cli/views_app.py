"""The examples' app with one view queried by its fields, for `memoir query --where` (run as
`memoir run tests.serve.cli.views_app:app`)."""

from __future__ import annotations

from entities.social import Post, PostsByAuthor, Profile
from runtime import App


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", "author"]):
    """The example's view, queried by author and by its count of posts."""


app = App("views", entities=[Post, Profile], views=[Authors])
