"""The README's samples, executed exactly as printed.

The convention, for every fenced block of README.md (a section added later is held to it too):

- A block right after a line `<!-- not-run: REASON -->` is not run; the reason is printed.
- ```python blocks run in order in one namespace, as one session would (top-level `await`
  allowed), in a fresh directory. After `<!-- file: NAME.py -->` the block is also written to
  NAME.py, where the shell blocks below find it (`memoir run shop:app`).
- ```sh blocks whose every line is a `memoir` command (`.venv/bin/memoir` too) run in a fresh
  directory holding those files: a `memoir run …` line starts the runtime there in the
  background (none: the block is the README's "second terminal", and `memoir run` with the
  default app is started for it); each other line must exit 0; the runtime must then stop on
  SIGTERM with exit 0. The console script is used, as a user would type it.
- ```json blocks: each line (or the whole block) must parse as JSON.
- Any other block fails this test until it is run by a rule above or carries a not-run reason.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPT = shutil.which("memoir", path=str(Path(sys.executable).parent)) or "memoir"

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Block:
    line: int  # where the fence opens, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason, if excluded
    file: str | None  # `<!-- file: NAME -->`: also written to this file

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ```{self.lang}"


_FENCE = re.compile(r"^```(\S*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")
_FILE = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->\s*$")


def blocks(markdown: str) -> list[Block]:
    found, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        not_run = _NOT_RUN.match(above)
        if not_run is not None and not not_run.group(1):
            pytest.fail(f"README.md:{start + 1}: a not-run marker needs a reason")
        named = _FILE.match(above)
        found.append(
            Block(
                start + 1,
                fence.group(1),
                "\n".join(body) + "\n",
                not_run.group(1) if not_run else None,
                named.group(1) if named else None,
            )
        )
        i += 1
    return found


def _memoir_lines(block: Block) -> list[list[str]] | None:
    """The block's commands if every one is `memoir …`, else None."""
    commands = []
    for line in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] not in ("memoir", ".venv/bin/memoir"):
            return None
        commands.append([SCRIPT, *words[1:]])
    return commands or None


def runnable(block: Block) -> bool:
    if block.lang == "python" or block.lang == "json":
        return True
    return block.lang in ("sh", "bash", "shell") and _memoir_lines(block) is not None


ALL = blocks(README.read_text(encoding="utf-8"))


def test_every_block_is_run_or_says_why_not() -> None:
    for block in ALL:
        if block.not_run is not None:
            print(f"{block.where}: not run: {block.not_run}")
    unaccounted = [b.where for b in ALL if b.not_run is None and not runnable(b)]
    assert not unaccounted, f"run these blocks, or put `<!-- not-run: REASON -->` right above them: {unaccounted}"


def test_json_blocks_parse() -> None:
    for block in (b for b in ALL if b.lang == "json" and b.not_run is None):
        try:
            json.loads(block.text)
        except json.JSONDecodeError:
            for line in filter(str.strip, block.text.splitlines()):
                json.loads(line)


async def test_python_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("readme_session")  # a real module: msgspec resolves annotations through it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    ran = 0
    for block in (b for b in ALL if b.lang == "python" and b.not_run is None):
        code = compile(block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)  # exec, with top-level await
        if inspect.isawaitable(result):
            await result
        ran += 1
    assert ran >= 3, "the entity, the Runtime and the testkit samples"


def _project(tmp: Path) -> Path:
    for block in ALL:
        if block.file is not None:
            (tmp / block.file).write_text(block.text, encoding="utf-8")
    return tmp


def _user_env() -> dict[str, str]:
    """The shell a reader has: no PYTHONPATH pointing at this checkout, no MEMOIR_* settings."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MEMOIR_")}


SH_BLOCKS = [b for b in ALL if b.not_run is None and b.lang in ("sh", "bash", "shell") and _memoir_lines(b)]


@pytest.mark.parametrize("block", SH_BLOCKS, ids=[b.where for b in SH_BLOCKS])
def test_memoir_sessions_run_as_printed(block: Block, tmp_path: Path) -> None:
    project = _project(tmp_path)
    commands = _memoir_lines(block)
    assert commands is not None
    starts = [c for c in commands if c[1:2] == ["run"]]
    assert len(starts) <= 1, f"{block.where}: one `memoir run` per block"
    start = starts[0] if starts else [SCRIPT, "run"]
    proc = subprocess.Popen(
        start,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_user_env(),
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("memoir: serving"), f"{block.where}: {shlex.join(start)} did not start: {banner!r}"
        for command in commands:
            if command in starts:
                continue
            result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=60, env=_user_env())
            shown = shlex.join(["memoir", *command[1:]])
            assert result.returncode == 0, f"{block.where}: `{shown}` exited {result.returncode}: {result.stderr}"
            print(f"$ {shown}\n{result.stdout}", end="")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, f"{block.where}: the runtime did not stop cleanly"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_convention_finds_what_the_readme_promises() -> None:
    """The samples the README's text refers to are among the blocks run: shop.py and its session, two commands."""
    assert any(b.file == "shop.py" and b.lang == "python" for b in ALL)
    sessions = [" ".join(" ".join(c[1:]) for c in _memoir_lines(b) or []) for b in SH_BLOCKS]
    assert any(s.startswith("run shop:app") for s in sessions), sessions
    assert any("send inventory XYZ-1 open" in s and "state inventory XYZ-1 --seq 1" in s for s in sessions), sessions
