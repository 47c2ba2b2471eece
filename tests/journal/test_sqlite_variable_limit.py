"""The SQLite journal writes a batch as multi-row statements of at most 5,200 values, fewer where the
build allows fewer: a build with the old limit of 999 (SQLite before 3.32, some system libraries still)
stores the same events, only in more statements (it refused the batch before)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from support.journals import ev

from runtime.journal.sqlite import SqliteJournal

pytestmark = pytest.mark.anyio


def traced(monkeypatch: pytest.MonkeyPatch, *, variables: int | None = None) -> list[str]:
    """Every statement the journal's connections run (values expanded), optionally on a build
    that allows only `variables` bound values per statement."""
    connect = SqliteJournal._connect
    statements: list[str] = []

    def connected(self: SqliteJournal) -> sqlite3.Connection:
        conn = connect(self)
        if variables is not None:
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(SqliteJournal, "_connect", connected)
    return statements


async def test_a_build_with_999_variables_stores_a_large_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements = traced(monkeypatch, variables=999)
    async with SqliteJournal(tmp_path / "j.db") as journal:
        assert journal.dialect.max_variables == 999
        async with anyio.create_task_group() as tg:  # one group commit: 120 entities x 3 events
            for i in range(120):
                tg.start_soon(journal.append, [ev(f"e{i}", s, b'{"n": %d}' % s) for s in (1, 2, 3)], 0)
        stored = await journal.read_all(1, 1000)
    assert len(stored) == 360
    assert [e.position for e in stored] == list(range(1, 361))
    assert {(e.entity_id, e.seq) for e in stored} == {(f"e{i}", s) for i in range(120) for s in (1, 2, 3)}
    inserts = [s for s in statements if s.startswith("INSERT INTO events")]
    assert len(inserts) >= 360 * 13 // 999  # 76 rows of 13 values per statement at most


async def test_batches_of_any_size_use_a_handful_of_statements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each distinct statement is cached by the connection, and a multi-row one is big: batch sizes
    from 1 to 300 must not make 300 of them (rows are padded to a power of two)."""
    statements = traced(monkeypatch)
    async with SqliteJournal(tmp_path / "j.db") as journal:
        n = 0
        for size in range(1, 301, 7):  # 43 group commits of 1, 8, 15, … 295 appends
            async with anyio.create_task_group() as tg:
                for _ in range(size):
                    tg.start_soon(journal.append, [ev(f"e{n}", 1, b'{"n": %d}' % n)], 0)
                    n += 1
        stored = await journal.read_all(1, 100_000)
    assert [(e.entity_id, e.payload) for e in stored] == [(f"e{i}", b'{"n": %d}' % i) for i in range(n)]
    assert {e.position for e in stored} == set(range(1, n + 1))
    # the trace shows each statement with its values: its row count tells which statement it was
    sizes = {s.count("),(") + 1 for s in statements if s.startswith("INSERT INTO events")}
    assert sizes <= {1, 2, 4, 8, 16, 32, 64, 128, 256, 400}, sorted(sizes)
