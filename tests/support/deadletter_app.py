"""An app whose consumer parks `poison` posts until it is fixed, for the dead-letter tests.

`Tally` counts each post on its author's profile, then (only once the handler is "fixed": the
file named by `MEMOIR_TEST_FIX_FILE` exists) on the `audit` profile too. A poison post fails in
between, so when it is parked the author's count already happened and the audit's has not: a
replay must do the second and not repeat the first. Importable by a `memoir run` process.
"""

from __future__ import annotations

import os
from pathlib import Path

from entities.social import Post, Profile, Published
from runtime import App
from runtime.streams.consumer import Consumer, Context
from runtime.streams.handlers import on

FIX_FILE = "MEMOIR_TEST_FIX_FILE"


def fixed() -> bool:
    path = os.environ.get(FIX_FILE)
    return path is not None and Path(path).exists()


class Tally(Consumer, name="tally", sources=[Post]):
    max_attempts = 2
    backoff = 0.05

    @on
    async def published(self, ctx: Context, e: Published) -> None:
        post = ctx.envelope.entity_id
        await ctx.send("profile", e.author, "count_post", {"post_id": post})
        if e.text == "poison" and not fixed():
            raise RuntimeError(f"cannot handle {post} yet")
        await ctx.send("profile", "audit", "count_post", {"post_id": post})


app = App("deadletters", entities=[Post, Profile], consumers=[Tally])
