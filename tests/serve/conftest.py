"""Fixtures for the CLI, crash and bad-input tests: `memoir run` as a real process (`support.process`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.process import RunningRuntime


@pytest.fixture
def runtime_process(tmp_path: Path) -> Iterator[RunningRuntime]:
    rt = RunningRuntime(tmp_path / "data").start()
    yield rt
    if rt.proc is not None:
        rt.proc.kill()
        rt.proc.wait()
        rt.close()


@pytest.fixture
def sagas_process(tmp_path: Path) -> Iterator[RunningRuntime]:
    """`memoir run entities:sagas`: the timer and workflow examples."""
    rt = RunningRuntime(tmp_path / "data", "entities:sagas").start()
    yield rt
    if rt.proc is not None:
        rt.proc.kill()
        rt.proc.wait()
        rt.close()
