"""Events for the archive's tests: a few entities, interleaved, old enough to move, with a snapshot."""

from __future__ import annotations

import time

import msgspec

from runtime import Envelope, Journal, Snapshot

DAY = 86400 * 10**9
ENTITIES = [("inventory", "XYZ-1"), ("inventory", "a/b c"), ("cart", "C1")]


def event(t: str, i: str, seq: int, recorded_at: int) -> Envelope:
    payload = msgspec.json.encode({"units": seq, "id": i})
    return Envelope(entity_type=t, entity_id=i, seq=seq, name="Received", version=1, payload=payload,
                    recorded_at=recorded_at, command_id=f"c-{seq}", reply=b'{"ok":1}')  # fmt: skip


async def fill(journal: Journal, per_entity: int = 30, snapshot_at: int = 20) -> None:
    """Events interleaved across entities, the older 25 per entity 30 days old; a snapshot at 20."""
    old = time.time_ns() - 30 * DAY
    for seq in range(1, per_entity + 1):
        when = old + seq if seq <= 25 else time.time_ns()
        for t, i in ENTITIES:
            await journal.append([event(t, i, seq, when)], seq - 1)
    for t, i in ENTITIES:
        await journal.save_snapshot(Snapshot(entity_type=t, entity_id=i, seq=snapshot_at, payload=b"{}", recorded_at=0))


async def everything(journal: Journal) -> list[Envelope]:
    out: list[Envelope] = []
    position = 1
    for _ in range(1000):
        page = await journal.read_all(position, limit=7)
        if not page:
            return out
        out.extend(page)
        position = page[-1].position + 1
    raise AssertionError("read_all did not end")
