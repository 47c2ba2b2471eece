"""A writer process for the tailer test: appends EVENTS events to each of ENTITIES entities.

Usage: python -m journal.pg_writer URL TAG ENTITIES EVENTS
"""

from __future__ import annotations

import sys
import time

import anyio

from runtime import Envelope
from runtime.journal.postgres import PostgresJournal


async def main(url: str, tag: str, entities: int, events: int) -> None:
    async with PostgresJournal(url) as journal:

        async def writer(k: int) -> None:
            for seq in range(1, events + 1):
                env = Envelope(
                    entity_type="tail",
                    entity_id=f"{tag}-{k}",
                    seq=seq,
                    name="Tick",
                    version=1,
                    payload=b"{}",
                    recorded_at=time.time_ns(),
                )
                await journal.append([env], seq - 1)

        async with anyio.create_task_group() as tg:
            for k in range(entities):
                tg.start_soon(writer, k)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
