"""One app with every feature the example scenarios use, for `memoir run tests.cluster.feature_app:app`.

The social consumer and view, the reservation (a timer, a consumer) and the transfer workflow
from `entities`, and an encrypted diary with a view over it, for forgetting and rebuilding. It
imports nothing from the tests, so a `memoir run` process (PYTHONPATH the repo) loads it too.
"""

from __future__ import annotations

import msgspec

from entities import (
    Account,
    CountPosts,
    InventoryItem,
    Post,
    PostsByAuthor,
    Profile,
    Reservation,
    ReservationStock,
    Transfer,
)
from runtime import App, Effect, Envelope, EventSourcedEntity, Rows, View, applies, command, on


class Written(msgspec.Struct, frozen=True):
    text: str


class Diary(EventSourcedEntity[list[str]], name="diary", encrypted=True):
    """An entity whose events are sealed: forgetting it destroys its key."""

    initial: list[str] = []  # noqa: RUF012 - the state's initial value, never mutated

    @command
    def write(self, lines: list[str], text: str) -> Effect[int]:
        return self.persist(Written(text)).reply(len)

    @command
    def get(self, lines: list[str]) -> Effect[list[str]]:
        return self.reply(lines)

    @applies
    def written(self, lines: list[str], e: Written) -> list[str]:
        return [*lines, e.text]


class Lines(msgspec.Struct):
    lines: int = 0


class DiaryLines(View[Lines], name="diary_lines", sources=[Diary]):
    """Lines per diary: a forgotten diary's row stays until the view is rebuilt, then it is gone."""

    @on
    def written(self, rows: Rows[Lines], e: Written, env: Envelope) -> None:
        row = rows.get(env.entity_id) or Lines()
        rows.put(env.entity_id, Lines(row.lines + 1))


app = App(
    "features",
    entities=[InventoryItem, Post, Profile, Reservation, Account, Transfer, Diary],
    views=[PostsByAuthor, DiaryLines],
    consumers=[CountPosts, ReservationStock],
)
