"""The samples of README.md and of every page under docs/, executed exactly as printed.

The convention, for every fenced block of those files (a page or section added later is held to it too):

- A block right after a line `<!-- not-run: REASON -->` is not run; the reason is printed.
- ```python blocks of one file run in order in one namespace, as one script would, in a fresh
  directory: plain Python (no top-level `await`: async code goes through `anyio.run`, as a
  reader's script must), so a block copied into a file runs there too. After
  `<!-- file: NAME.py -->` the block is also written to NAME.py, where that file's shell blocks
  find it (`memoir run shop:app`).
- ```sh blocks whose every line is a `memoir` command (`.venv/bin/memoir` too) run in a fresh
  directory holding that file's named files: a `memoir run …` line starts the runtime there in
  the background (none: the block is a "second terminal", and `memoir run` with the default app
  is started for it); each other line must exit 0; the runtime must then stop on SIGTERM with
  exit 0. The console script is used, as a user would type it.
- ```json blocks: each line (or the whole block) must parse as JSON.
- Any other block fails this test until it is run by a rule above or carries a not-run reason.
  A fence may carry attributes after its language (```python title="shop.py"); fences are never
  indented, so no block escapes the parser.
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SCRIPT = shutil.which("memoir", path=str(Path(sys.executable).parent)) or "memoir"


@dataclass(frozen=True)
class Block:
    doc: str  # the file, relative to the repository
    line: int  # where the fence opens, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason, if excluded
    file: str | None  # `<!-- file: NAME -->`: also written to this file

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line} ```{self.lang}"


_FENCE = re.compile(r"^```([\w-]*)(?:\s+\S.*)?$")
_INDENTED_FENCE = re.compile(r"^\s+```")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")
_FILE = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->\s*$")


def blocks(path: Path) -> list[Block]:
    doc = path.relative_to(ROOT).as_posix()
    found, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
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
        named = _FILE.match(above)
        found.append(
            Block(
                doc,
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


ALL = [b for doc in DOCS for b in blocks(doc)]
README_BLOCKS = [b for b in ALL if b.doc == "README.md"]
PYTHON_DOCS = sorted({b.doc for b in ALL if b.lang == "python" and b.not_run is None})


def _distinct_sessions() -> list[Block]:
    """The memoir sessions; one printed twice (the README's, again in First steps) with the same files runs once."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    out = []
    for b in ALL:
        if b.not_run is None and b.lang in ("sh", "bash", "shell") and _memoir_lines(b):
            files = tuple(sorted((f.file, f.text) for f in ALL if f.doc == b.doc and f.file is not None))
            if (b.text, files) not in seen:
                seen.add((b.text, files))
                out.append(b)
    return out


SH_BLOCKS = _distinct_sessions()


def test_every_block_is_run_or_says_why_not() -> None:
    for block in ALL:
        if block.not_run is not None:
            print(f"{block.where}: not run: {block.not_run}")
    unaccounted = [b.where for b in ALL if b.not_run is None and not runnable(b)]
    assert not unaccounted, f"run these blocks, or put `<!-- not-run: REASON -->` right above them: {unaccounted}"
    reasonless = [b.where for b in ALL if b.not_run == ""]
    assert not reasonless, f"a not-run marker needs a reason: {reasonless}"


def test_no_fence_escapes_the_parser() -> None:
    """An indented fence (inside a list or an admonition) would be a block nobody runs."""
    indented = [
        f"{doc.relative_to(ROOT)}:{n}"
        for doc in DOCS
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if _INDENTED_FENCE.match(line)
    ]
    assert not indented, f"put these fences at the start of the line: {indented}"


def test_json_blocks_parse() -> None:
    for block in (b for b in ALL if b.lang == "json" and b.not_run is None):
        try:
            json.loads(block.text)
        except json.JSONDecodeError:
            for line in filter(str.strip, block.text.splitlines()):
                json.loads(line)


@pytest.mark.parametrize("doc", PYTHON_DOCS)
def test_python_blocks_run_in_order(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(_project(tmp_path, doc))
    # a real module: msgspec resolves annotations through it
    module = types.ModuleType("docs_session_" + re.sub(r"\W", "_", doc))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    for block in (b for b in ALL if b.doc == doc and b.lang == "python" and b.not_run is None):
        exec(compile(block.text, block.where, "exec"), namespace)


def _project(tmp: Path, doc: str) -> Path:
    for block in ALL:
        if block.doc == doc and block.file is not None:
            (tmp / block.file).write_text(block.text, encoding="utf-8")
    return tmp


def _user_env() -> dict[str, str]:
    """The shell a reader has: no PYTHONPATH pointing at this checkout, no MEMOIR_* settings."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MEMOIR_")}


@pytest.mark.parametrize("block", SH_BLOCKS, ids=[b.where for b in SH_BLOCKS])
def test_memoir_sessions_run_as_printed(block: Block, tmp_path: Path) -> None:
    project = _project(tmp_path, block.doc)
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
    assert any(b.file == "shop.py" and b.lang == "python" for b in README_BLOCKS)
    sessions = [" ".join(" ".join(c[1:]) for c in _memoir_lines(b) or []) for b in SH_BLOCKS if b.doc == "README.md"]
    assert any(s.startswith("run shop:app") for s in sessions), sessions
    assert any("send inventory XYZ-1 open" in s and "state inventory XYZ-1 --seq 1" in s for s in sessions), sessions
    assert any(b.doc.startswith("docs/") for b in SH_BLOCKS), "the docs' memoir sessions"
    assert len(PYTHON_DOCS) >= 5, PYTHON_DOCS
