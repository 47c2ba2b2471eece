"""A new user's first hour, each friction of issue 12 as the `memoir` process shows it.

One runtime serves the whole module; the tests that need a stopped runtime or another app
start their own. The error rule under test (runtime/serve/outcome.py): results on stdout,
an error is one line `memoir: <code>: <message>` on stderr (JSON with --json), exit 1 when
the request was answered with an error, 2 when it could not be asked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support.ci import in_ci
from support.postgres import POSTGRES_URL, postgres_reachable
from support.process import MEMOIR, ROOT, RunningRuntime

from runtime.serve.cli.main import parser

# The console script, as a user runs it: unlike `python -m`, it does not put the working directory on sys.path.
SCRIPT = shutil.which("memoir", path=str(Path(sys.executable).parent)) or "memoir"

OPEN = '{"units": 100, "last_in": "2022-01-01", "last_out": "2022-02-01"}'


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRuntime]:
    runtime = RunningRuntime(tmp_path_factory.mktemp("first-hour") / "data").start()
    assert runtime.cli("send", "inventory", "XYZ-1", "open", OPEN).returncode == 0
    yield runtime
    if runtime.proc is not None:
        assert runtime.stop() == 0


def one_error_line(result: subprocess.CompletedProcess[str], status: int, code: str, message: str) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stdout == "", "errors never go to stdout"
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"memoir: {code}: "), result.stderr
    assert re.search(message, result.stderr), result.stderr


# -- a locked data dir ------------------------------------------------------------------------------


def test_a_second_run_on_the_same_data_dir_is_refused_naming_the_holder(rt: RunningRuntime) -> None:
    assert rt.proc is not None
    url = rt.nats_url
    second = rt.cli("run")
    one_error_line(second, 2, "locked", rf"data dir .*data is in use by pid {rt.proc.pid}\b")
    assert rt.nats_url == url, "the first runtime's NATS URL is left alone"
    assert rt.cli("send", "inventory", "XYZ-1", "receive", '{"units": 1, "on": "2022-03-01"}').returncode == 0


def test_demo_beside_a_running_runtime_is_refused_and_writes_nothing(rt: RunningRuntime) -> None:
    before = rt.cli("events", "inventory", "XYZ-1", "--json").stdout
    demo = rt.cli("demo")
    one_error_line(demo, 2, "locked", "in use by pid [0-9]+ .*the demo writes straight into the journal")
    assert rt.cli("events", "inventory", "XYZ-1", "--json").stdout == before


def test_the_manifest_is_owner_only_and_names_what_the_runtime_uses(rt: RunningRuntime) -> None:
    manifest = rt.data / "memoir.json"
    assert manifest.stat().st_mode & 0o777 == 0o600
    recorded = json.loads(manifest.read_text())
    assert recorded["app"] == "entities:app" and recorded["nats_url"] == rt.nats_url
    assert recorded["journal_url"] == f"sqlite:///{(rt.data / 'journal.db').resolve()}"


# -- one error rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "code", "message"),
    [
        (["send", "inventory", "", "open", OPEN], 1, "invalid", "entity id is empty"),
        (["send", "inventory", "X", "open", "{not json"], 1, "invalid", "ARGS is not JSON"),
        (["send", "inventory", "X", "open", "[1, 2]"], 1, "invalid", "ARGS must be a JSON object"),
        (["send", "inventory", "XYZ-1", "sell", '{"units": 1000, "on": "2022-03-02"}'], 1, "rejected", "cannot sell"),
        (["send", "nosuchtype", "X", "open"], 1, "unknown_entity_type", "no entity type 'nosuchtype'"),
        (["state", "inventory", "XYZ-1", "--seq", "99"], 1, "not_found", "has no seq 99: its last event is seq [0-9]+"),
        (["state", "nosuchtype", "X"], 1, "unknown_entity_type", r"no entity type 'nosuchtype' \(known: cart,"),
        (["events", "nosuchtype", "X"], 1, "unknown_entity_type", r"no entity type 'nosuchtype' \(known: cart,"),
        (["events", "inventory", "nobody"], 1, "not_found", "inventory/nobody has no events"),
        (["send", "inventory"], 2, "usage", r"required: ID, COMMAND \(see `memoir send --help`\)"),
        (["query", "posts_by_author", "nobody"], 1, "not_found", "view posts_by_author has no row 'nobody'"),
        (
            ["send", "inventory", "X", "open", "--prefix", "other"],
            2,
            "unreachable",
            "no Memoir runtime is serving other",
        ),
    ],
)
def test_errors_are_one_line_on_stderr_with_a_code_and_a_status(
    rt: RunningRuntime, args: list[str], status: int, code: str, message: str
) -> None:
    one_error_line(rt.cli(*args), status, code, message)


def test_json_makes_errors_json_too(rt: RunningRuntime) -> None:
    result = rt.cli("send", "inventory", "XYZ-1", "sell", '{"units": 1000, "on": "2022-03-02"}', "--json")
    assert result.returncode == 1 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["ok"] is False and error["error"]["code"] == "rejected"
    assert error["error"]["message"].startswith("cannot sell 1000 units")
    missing = rt.cli("state", "inventory", "XYZ-1", "--seq", "99", "--json")
    assert missing.returncode == 1 and json.loads(missing.stderr)["error"]["code"] == "not_found"


def test_export_into_a_closed_pipe_stops_quietly(rt: RunningRuntime) -> None:
    """`memoir export | head -3` once head has gone: no traceback, the status of a SIGPIPE'd tool."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written: that write fails, always
    try:
        proc = subprocess.run(
            [*MEMOIR, "export", "--data-dir", str(rt.data)],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_version_prints_the_installed_version(rt: RunningRuntime) -> None:
    result = subprocess.run([*MEMOIR, "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and re.fullmatch(r"memoir \d+\.\d+\.\S+\n", result.stdout), result


def test_help_shows_each_command_its_own_options_with_help_text_and_examples() -> None:
    def help_of(*command: str) -> str:
        result = subprocess.run([*MEMOIR, *command, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run_help = help_of("run")
    assert not re.search(r"^ +--(json|timeout)\b", run_help, re.MULTILINE), "client-only options are not run's"
    assert "--metrics-port" in run_help and "memoir run shop:app" in run_help
    main_help = help_of()
    assert "exit status" in main_help and "memoir COMMAND --help" in main_help
    # The other commands' help, from the same parser the process builds (a process each would cost seconds).
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"run", "send", "events", "state", "query", "replay", "export", "cluster", "demo"}
    for name, sub in commands.choices.items():
        text = sub.format_help()
        assert f"examples:\n  memoir {name}" in text, name
        assert "exit status: 0 done; 1 answered with an error" in text, name
        assert re.search(r"^ +--json\b", text, re.MULTILINE) or name == "run", name


def test_every_option_of_every_command_has_help_text() -> None:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"memoir {name} {'/'.join(action.option_strings) or action.dest} has no help text"


# -- a runtime that stopped, and a data dir that remembers its app and journal ---------------------

SHOP = """
import msgspec
from runtime import App, Effect, EventSourcedEntity, applies, command

class Counted(msgspec.Struct):
    n: int

class Tally(msgspec.Struct):
    total: int = 0
    times: int = 0

class Counter(EventSourcedEntity[Tally], name="counter"):
    initial = Tally()

    @command
    def add(self, t: Tally, n: int) -> Effect[int]:
        return self.persist(Counted(n)).reply(lambda s: s.total)

    @applies
    def counted(self, t: Tally, e: Counted) -> Tally:
        return Tally(t.total + e.n, t.times + 1)

app = App("tally", entities=[Counter])
"""


def memoir(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user types it: the console script, no PYTHONPATH, in `cwd`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MEMOIR_")}
    return subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def test_a_stopped_runtime_is_named_and_its_data_dir_still_knows_its_app_and_journal(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "tally.py").write_text(textwrap.dedent(SHOP))
    # Not the data dir's default SQLite file: PostgreSQL (as the issue saw it), or another SQLite file.
    schema = f"cli_{uuid.uuid4().hex[:12]}"
    journal = f"{POSTGRES_URL}?schema={schema}" if in_ci() or postgres_reachable() is None else ""
    journal = journal or f"sqlite:///{tmp_path / 'elsewhere.db'}"
    if journal.startswith("postgresql"):
        request.addfinalizer(lambda: anyio.run(drop_schema, schema))
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MEMOIR_")}
    proc = subprocess.Popen(
        [SCRIPT, "run", "tally:app", "--data-dir", str(data), "--journal", journal, "--log-format", "json"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("memoir: serving tally (counter;"), banner
        for n in (2, 3):
            sent = memoir(project, "send", "counter", "c1", "add", json.dumps({"n": n}), "--data-dir", str(data))
            assert sent.returncode == 0, sent.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert status == 0

    # From another directory, with only the data dir: the tally app folds the tally journal.
    state = memoir(tmp_path, "state", "counter", "c1", "--data-dir", str(data), "--json")
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout) == {"seq": 2, "state": {"total": 5, "times": 2}}
    events = memoir(tmp_path, "events", "counter", "c1", "--data-dir", str(data))
    assert events.returncode == 0 and len(events.stdout.splitlines()) == 1 + 2  # the header, two events

    # The runtime is gone: said at once, with what to do (no wait for a reply that cannot come).
    sent = memoir(tmp_path, "send", "counter", "c1", "add", '{"n": 1}', "--data-dir", str(data))
    one_error_line(sent, 2, "unreachable", rf"no Memoir runtime is running with data dir {data}: start it with")
    # The demo plays entities:app: it will not mix its events into the tally journal.
    demo = memoir(tmp_path, "demo", "--data-dir", str(data))
    one_error_line(demo, 2, "config", "belongs to app tally:app; the demo plays entities:app")
    # NATS itself down at an address the user gave: said so.
    down = memoir(tmp_path, "send", "counter", "c1", "add", "--nats-url", "nats://127.0.0.1:1", "--timeout", "1")
    one_error_line(down, 2, "unreachable", "cannot connect to NATS at nats://127.0.0.1:1: connection refused")


def test_an_entity_mistake_stops_run_with_one_line_naming_the_method(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        textwrap.dedent(SHOP).replace("def counted(self, t: Tally, e: Counted) -> Tally:", "def counted(self, t, e):")
    )
    result = memoir(tmp_path, "run", "broken:app", "--data-dir", str(tmp_path / "data"))
    one_error_line(result, 2, "config", r"app 'broken:app': Counter\.counted: annotate the event parameter")


def test_an_app_that_is_not_there_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    result = memoir(tmp_path, "run", "shop:app", "--data-dir", str(tmp_path / "data"))
    one_error_line(
        result, 2, "config", rf"no module 'shop' in {tmp_path} .*run memoir in the directory that holds shop\.py"
    )


def test_the_asyncpg_hint_is_right_from_pypi_and_from_a_checkout(tmp_path: Path) -> None:
    """asyncpg missing (shadowed here by a package that fails to import): the hint names the PyPI package."""
    (tmp_path / "asyncpg").mkdir()
    (tmp_path / "asyncpg" / "__init__.py").write_text("raise ImportError('No module named asyncpg')\n")
    result = memoir(
        tmp_path, "events", "inventory", "X", "--journal", "postgresql://u@127.0.0.1:1/db", "--data-dir", "d"
    )
    one_error_line(result, 2, "config", r"needs the asyncpg package: `pip install asyncpg` \(or install memoir with")


def test_demo_uses_a_data_dir_of_its_own_by_default(tmp_path: Path) -> None:
    demo = memoir(tmp_path, "demo")
    assert demo.returncode == 0, demo.stderr
    assert "history of inventory/XYZ-1" in demo.stdout
    assert (tmp_path / ".memoir-demo" / "journal.db").exists() and not (tmp_path / ".memoir").exists()
