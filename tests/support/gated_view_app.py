"""The examples' app with a view a test holds inside its handler while the file named by
`$MEMOIR_TEST_VIEW_GATE` exists (it says so by creating that path + ".entered"): a replay asked
meanwhile waits for the batch (`memoir run tests.support.gated_view_app:app`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from entities.social import AuthorPosts, Post, PostsByAuthor, Profile, Published
from runtime import App, Envelope, Rows, on

GATE = "MEMOIR_TEST_VIEW_GATE"


class GatedAuthors(PostsByAuthor, name="authors", sources=[Post]):
    @on
    def published(self, rows: Rows[AuthorPosts], e: Published, env: Envelope) -> None:
        if GATE in os.environ:
            gate = Path(os.environ[GATE])
            gate.with_name(gate.name + ".entered").touch()
            deadline = time.monotonic() + 60
            while gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        super().published(rows, e, env)


app = App("gated-views", entities=[Post, Profile], views=[GatedAuthors])
