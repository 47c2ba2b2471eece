"""The examples' app with one view queried by its fields, for `memoir query --where` (run as
`memoir run tests.serve.cli.views_app:app`), and one whose view a test holds mid-batch (`:gated`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from entities.social import AuthorPosts, Post, PostsByAuthor, Profile, Published
from runtime import App, Envelope, Rows, on


class Authors(PostsByAuthor, name="authors", sources=[Post], indexes=["posts", "author"]):
    """The example's view, queried by author and by its count of posts."""


app = App("views", entities=[Post, Profile], views=[Authors])


GATE = "MEMOIR_TEST_VIEW_GATE"


class GatedAuthors(PostsByAuthor, name="authors", sources=[Post]):
    """The example's view, held inside its handler while the file `$MEMOIR_TEST_VIEW_GATE` exists
    (it says so by creating that path + ".entered"): a replay asked meanwhile waits for the batch."""

    @on
    def published(self, rows: Rows[AuthorPosts], e: Published, env: Envelope) -> None:
        if GATE in os.environ:
            gate = Path(os.environ[GATE])
            gate.with_name(gate.name + ".entered").touch()
            deadline = time.monotonic() + 60
            while gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        super().published(rows, e, env)


gated = App("gated-views", entities=[Post, Profile], views=[GatedAuthors])
