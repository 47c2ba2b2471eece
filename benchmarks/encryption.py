"""Encrypted entities: commands and recovery of an `encrypted=True` type beside the same type in the clear.

Same entity code, same run, interleaved rounds (best of each): the ratios are the cost of
sealing every payload, reply and snapshot with AES-GCM, and of opening them on recovery.
Each entity gets one untimed command first: creating its data key is one more journal write,
once in the entity's life, and is not what a steady stream of commands pays.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from pathlib import Path
from typing import Any

import _common as c  # puts the repository on sys.path
import anyio

from entities.inventory import InventoryItem, Received
from runtime import Envelope, Journal, MemoryJournal, Runtime, SqliteJournal, model_of
from runtime.engine.keyring import KeyRing, seal_envelope
from runtime.model.sealing import SealKey
from runtime.serve.process.tuning import tune_gc


class PlainItem(InventoryItem, name="plain"):
    snapshot_every = 0  # recovery replays every event


class SealedItem(InventoryItem, name="sealed", encrypted=True):
    snapshot_every = 0


TYPES = [PlainItem, SealedItem]
DAY = {"units": 1, "on": "2022-03-01"}


async def sequential(journal: Journal, entity_type: str, n: int) -> float:
    """Commands per second, one at a time to 50 entities: the CPU cost of a turn, no batching to hide it."""
    async with Runtime(TYPES, journal) as rt:
        for k in range(50):
            await rt.ask(entity_type, f"e{k}", "receive", DAY)
        started = time.perf_counter()
        for i in range(n):
            await rt.ask(entity_type, f"e{i % 50}", "receive", DAY, command_id=f"{entity_type}-{i}")
        return n / (time.perf_counter() - started)


async def concurrent(journal: Journal, entity_type: str, n: int, senders: int = 64) -> float:
    """Commands per second from 64 senders to 64 entities: group commit, as a service runs."""
    async with Runtime(TYPES, journal) as rt:

        async def sender(k: int) -> None:
            for i in range(n // senders):
                await rt.ask(entity_type, f"c{k}", "receive", DAY, command_id=f"{entity_type}-{k}-{i}")

        async with anyio.create_task_group() as tg:
            for k in range(senders):
                tg.start_soon(functools.partial(rt.ask, entity_type, f"c{k}", "receive", DAY))
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k in range(senders):
                tg.start_soon(sender, k)
        return (n // senders * senders) / (time.perf_counter() - started)


async def fill(journal: Journal, entity_type: str, events: int, key: SealKey | None) -> None:
    codec = model_of(InventoryItem).codec
    payload = codec.encode(Received(1, dt.date(2022, 3, 1)))
    now = time.time_ns()
    for first in range(1, events + 1, 2000):
        batch = [
            Envelope(
                entity_type=entity_type,
                entity_id="replayed",
                seq=seq,
                name="Received",
                version=1,
                payload=payload,
                recorded_at=now,
            )
            for seq in range(first, min(first + 2000, events + 1))
        ]
        sealed = batch if key is None else [seal_envelope(key, e) for e in batch]
        await journal.append(sealed, first - 1)


async def replay_seconds(path: Path, entity_type: str) -> float:
    async with SqliteJournal(path) as journal, Runtime(TYPES, journal) as rt:
        started = time.perf_counter()
        reply = await rt.ask(entity_type, "replayed", "get")
        elapsed = time.perf_counter() - started
        assert reply.seq > 0
        return elapsed


async def run(d: Path, commands: int, events: int, rounds: int) -> dict[str, Any]:
    best: dict[str, float] = {}

    def keep(label: str, value: float, higher_is_better: bool = True) -> None:
        old = best.get(label)
        if old is None or (value > old if higher_is_better else value < old):
            best[label] = value

    for r in range(rounds):
        for t in ("plain", "sealed"):  # interleaved: a noisy neighbour hurts both alike
            async with MemoryJournal() as memory:
                keep(f"memory.{t}", await sequential(memory, t, commands))
            async with SqliteJournal(d / f"cmd-{t}-{r}.db") as sqlite:
                keep(f"sqlite.{t}", await concurrent(sqlite, t, commands))
    async with SqliteJournal(d / "replay.db") as sqlite:
        await fill(sqlite, "plain", events, None)
        await fill(sqlite, "sealed", events, await KeyRing(sqlite.key_store()).for_write("sealed", "replayed"))
    for _ in range(rounds):
        for t in ("plain", "sealed"):
            keep(f"replay.{t}", events / await replay_seconds(d / "replay.db", t))
    return best


def main() -> None:
    tune_gc()
    p = c.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    commands, events, rounds = (3_000, 10_000, 3) if args.quick else (20_000, 50_000, 5)
    print(f"encryption: {commands:,} commands per round, replay of {events:,} events, best of {rounds}", flush=True)
    with c.scratch_dir() as d:
        b = anyio.run(run, d, commands, events, rounds)
    ratios = {}
    for what, label in (("memory", "commands/s, memory, one at a time"), ("sqlite", "commands/s, sqlite, 64 senders")):
        c.line(f"{label}: plain", b[f"{what}.plain"])
        c.line(f"{label}: sealed", b[f"{what}.sealed"])
        ratios[what] = b[f"{what}.sealed"] / b[f"{what}.plain"]
    c.line("replay events/s: plain", b["replay.plain"])
    c.line("replay events/s: sealed", b["replay.sealed"])
    ratios["replay"] = b["replay.sealed"] / b["replay.plain"]
    for what, ratio in ratios.items():
        c.line(f"sealed / plain, {what}", f"{ratio:.2f}")
    c.goal("sealed / plain commands, sqlite", ratios["sqlite"], ">=", 0.8)
    c.goal("sealed / plain replay", ratios["replay"], ">=", 0.5)
    c.finish({f"{k}_per_s": v for k, v in b.items()} | {f"ratio_{k}": v for k, v in ratios.items()})


if __name__ == "__main__":
    main()
