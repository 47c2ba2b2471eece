"""The event loop choice: uvloop by default where it is installed, asyncio's own on request or without it."""

from __future__ import annotations

import pytest

from runtime.model.errors import ConfigError
from runtime.serve.process import eventloop


def test_the_default_is_uvloop_where_it_installs() -> None:
    expected = "uvloop" if eventloop.uvloop_available() else "asyncio"
    assert eventloop.choose(None, env={}) == expected


def test_a_flag_beats_the_environment() -> None:
    assert eventloop.choose("asyncio", env={"MEMOIR_LOOP": "uvloop"}) == "asyncio"
    assert eventloop.choose(None, env={"MEMOIR_LOOP": "asyncio"}) == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert eventloop.choose("auto", env={}) == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.choose("uvloop", env={})


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="loop must be one of"):
        eventloop.choose("trio", env={})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_uses_the_chosen_loop(loop: str) -> None:
    if loop == "uvloop" and not eventloop.uvloop_available():
        pytest.skip("uvloop is not installed here")

    async def which() -> str:
        return eventloop.current()

    assert eventloop.run(which, loop=loop) == loop
