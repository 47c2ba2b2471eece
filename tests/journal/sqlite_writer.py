"""A writer process for the checkpoint crash test: appends up to EVENTS events to each of ENTITIES entities
(the test kills it long before),
with small WAL checkpoint sizes so the checkpoint thread runs many times, and prints one line per
acknowledged append: `entity seq checkpoints` (checkpoints: the thread's PASSIVE ones so far).

Usage: python -m journal.sqlite_writer PATH ENTITIES EVENTS
"""

from __future__ import annotations

import sys
import time

import anyio

from runtime import Envelope, SqliteJournal

PAYLOAD = b'"' + b"x" * 2000 + b'"'


async def main(path: str, entities: int, events: int) -> None:
    journal = SqliteJournal(path, wal_checkpoint_at=64 * 1024, wal_limit=256 * 1024)
    async with journal:

        async def writer(k: int) -> None:
            for seq in range(events):
                env = Envelope(
                    entity_type="crash",
                    entity_id=f"e{k}",
                    seq=seq + 1,
                    name="Tick",
                    version=1,
                    payload=PAYLOAD,
                    recorded_at=time.time_ns(),
                )
                await journal.append([env], seq)
                sys.stdout.write(f"e{k} {seq + 1} {journal._checkpointer.passive}\n")
                sys.stdout.flush()

        async with anyio.create_task_group() as tg:
            for k in range(entities):
                tg.start_soon(writer, k)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
