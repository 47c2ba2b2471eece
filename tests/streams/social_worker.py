"""A runtime process for the kill-and-restart test: publishes posts 0..N-1 with command ids, then exits.

Usage: python -m tests.streams.social_worker NATS_URL DATA_DIR POSTS AUTHORS
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from entities import app
from runtime import SqliteJournal
from runtime.serve.service._service import Service
from runtime.streams.view_store import SqliteViewStore


async def main(nats_url: str, data: Path, posts: int, authors: int) -> None:
    async with (
        SqliteJournal(data / "journal.db") as journal,
        SqliteViewStore(data / "views.db") as views,
        Service(app, journal, nats_url=nats_url, view_store=views) as svc,
    ):

        async def sender(k: int) -> None:
            for i in range(k, posts, 8):
                args = {"author": f"author-{i % authors}", "text": f"post {i}"}
                await svc.runtime.ask("post", f"p{i}", "publish", args, command_id=f"publish-{i}")

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(sender, k)
        print("sent", flush=True)


if __name__ == "__main__":
    url, data, n, authors = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    anyio.run(main, url, data, n, authors)
