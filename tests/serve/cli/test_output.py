"""One output style per kind: aligned tables with a header row for people, JSON Lines for `--json`;
and read-only commands that agree on what "not there" means and never create files."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.process import MEMOIR, ROOT, RunningRuntime

OPEN = '{"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}'


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRuntime]:
    runtime = RunningRuntime(tmp_path_factory.mktemp("output") / "data", "entities:sagas").start()
    for args in (
        ("inventory", "XYZ-1", "open", OPEN),
        ("inventory", "XYZ-1", "receive", '{"units": 5, "on": "2022-03-01"}'),
        ("inventory", "SKU", "open", '{"units": 10}'),  # the reservation's stock: XYZ-1 stays as the tests left it
        ("reservation", "r1", "hold", '{"sku": "SKU", "units": 1, "hold_for": 3600}'),
    ):
        sent = runtime.cli("send", *args)
        assert sent.returncode == 0, sent.stderr
    yield runtime
    if runtime.proc is not None:
        assert runtime.stop() == 0


def columns(header: str) -> list[int]:
    """Where each column starts: after two or more spaces, or at 0."""
    return [0] + [m.end() for m in re.finditer(r" {2,}", header)]


def assert_table(text: str, header: list[str]) -> list[str]:
    """A header row, then rows whose cells start where the header's do."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0].split() == header, lines[0]
    starts = columns(lines[0])
    for line in lines[1:]:
        for start in starts[1:]:
            assert line[start - 1] == " " and line[start] != " ", (lines[0], line)
    return lines[1:]


def assert_json_lines(text: str) -> list[dict[str, object]]:
    rows = []
    for line in text.splitlines():
        row = json.loads(line)
        assert isinstance(row, dict), line
        assert line == json.dumps(row, separators=(",", ":"), ensure_ascii=False), f"not compact: {line}"
        rows.append(row)
    return rows


def test_events_is_a_table_with_a_header_row(rt: RunningRuntime) -> None:
    rows = assert_table(
        rt.cli("events", "inventory", "XYZ-1").stdout, ["SEQ", "RECORDED", "PRINCIPAL", "EVENT", "PAYLOAD"]
    )
    assert [r.split()[0] for r in rows] == ["1", "2"] and "Opened" in rows[0] and "Received" in rows[1]
    assert [r["seq"] for r in assert_json_lines(rt.cli("events", "inventory", "XYZ-1", "--json").stdout)] == [1, 2]


def test_state_is_a_one_row_table_of_its_fields(rt: RunningRuntime) -> None:
    rows = assert_table(
        rt.cli("state", "inventory", "XYZ-1", "--seq", "1").stdout, ["SEQ", "UNITS", "LAST_IN", "LAST_OUT", "OPENED"]
    )
    assert rows == ["1    100    2022-01-01  2022-02-01  true"]
    (row,) = assert_json_lines(rt.cli("state", "inventory", "XYZ-1", "--json").stdout)
    assert row["seq"] == 2 and row["state"] == {
        "units": 105, "last_in": "2022-03-01", "last_out": "2022-02-01", "opened": True
    }  # fmt: skip


def test_send_prints_a_table_or_one_json_line(rt: RunningRuntime) -> None:
    sent = rt.cli("send", "inventory", "XYZ-1", "receive", '{"units": 1, "on": "2022-03-02"}', "--command-id", "c-1")
    assert assert_table(sent.stdout, ["SEQ", "RESULT"]) == ["3    106"]
    again = rt.cli("send", "inventory", "XYZ-1", "receive", '{"units": 1, "on": "2022-03-02"}', "--command-id", "c-1")
    assert "repeat of an earlier command id" in again.stderr and assert_table(again.stdout, ["SEQ", "RESULT"]) == [
        "3    106"
    ]
    (row,) = assert_json_lines(
        rt.cli("send", "inventory", "XYZ-1", "receive", '{"units": 1, "on": "2022-03-02"}', "--json").stdout
    )
    assert row == {"ok": True, "result": 107, "seq": 4, "duplicate": False}


def test_timers_show_when_each_fires_as_people_write_it(rt: RunningRuntime) -> None:
    (row,) = assert_table(rt.cli("timers", "reservation", "r1").stdout, ["NAME", "DUE", "WHEN", "EVERY", "SENDS"])
    assert re.search(r"^expire +\S+ +in (59m \d+s|1h) +- +reservation/r1 expire", row), row
    (listed,) = assert_json_lines(rt.cli("timers", "reservation", "r1", "--json").stdout)
    assert listed["entity_id"] == "r1" and [t["name"] for t in listed["timers"]] == ["expire"]  # type: ignore[attr-defined]


def test_timers_json_with_no_timers_is_still_json_on_stdout(rt: RunningRuntime) -> None:
    none = rt.cli("timers", "reservation", "nobody", "--json")
    assert none.returncode == 0 and none.stderr == ""
    assert assert_json_lines(none.stdout) == [{"entity_type": "reservation", "entity_id": "nobody", "timers": []}]
    human = rt.cli("timers", "reservation", "nobody")
    assert human.returncode == 0 and human.stdout == "reservation/nobody has no pending timers\n"


def test_state_and_events_agree_on_an_entity_with_no_events(rt: RunningRuntime) -> None:
    state, events = rt.cli("state", "inventory", "NOPE"), rt.cli("events", "inventory", "NOPE")
    assert (state.returncode, events.returncode) == (1, 1) and state.stdout == events.stdout == ""
    assert state.stderr == events.stderr
    assert re.fullmatch(r"memoir: not_found: inventory/NOPE has no events in sqlite:///\S+\n", state.stderr)
    as_json = rt.cli("state", "inventory", "NOPE", "--json")
    assert json.loads(as_json.stderr)["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "args",
    [
        ["state", "inventory", "X"],
        ["events", "inventory", "X"],
        ["export"],
        ["timers", "reservation", "r1"],
        ["state", "inventory", "X", "--data-dir", "elsewhere"],
    ],
)
def test_read_only_commands_in_an_empty_directory_create_nothing(tmp_path: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOIR_")}
    done = subprocess.run(
        [*MEMOIR, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == 2 and done.stdout == "", done
    assert re.fullmatch(r"memoir: unreachable: no journal at \S+journal\.db: .*memoir run.*\n", done.stderr), (
        done.stderr
    )
    assert list(tmp_path.iterdir()) == []
