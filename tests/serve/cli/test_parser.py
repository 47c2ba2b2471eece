"""The parser as a user meets it: no guessed option prefixes, and --help that reads well."""

from __future__ import annotations

import argparse
import re

import pytest

from runtime.serve.cli.main import main, parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "inventory", "X", "--nats", "nats://127.0.0.1:1"],  # once taken for --nats-url
        ["state", "inventory", "X", "--js"],  # once taken for --json
        ["run", "--metrics", "0"],  # once taken for --metrics-port / --metrics-host: ambiguous, but still guessed at
        ["--vers"],
    ],
)
def test_option_prefixes_are_not_accepted(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("memoir: usage: ") and err.count("\n") == 1, err


def test_no_parser_accepts_abbreviations() -> None:
    assert parser().allow_abbrev is False
    assert all(p.allow_abbrev is False for p in _commands().values())


def test_the_nats_options_are_one_titled_group_and_stay_out_of_the_usage_line() -> None:
    for name, sub in _commands().items():
        text = sub.format_help()
        usage = text.split("\n\n", 1)[0]
        assert "--nats" not in usage, (name, usage)
        assert usage.startswith(f"usage: memoir {name} [options]"), (name, usage)
        titles = [
            g.title for g in sub._action_groups if any(a.option_strings[:1] == ["--nats-ca"] for a in g._group_actions)
        ]
        assert len(titles) == 1 and titles[0] is not None and titles[0].startswith("NATS"), (name, titles)
        options = text.split("\nexamples:", 1)[0]
        assert options.count("--nats-ca") == 1 and options.count("--nats-url") == 1, name
        assert not re.search(r"AUTH_[A-Z_]+", text), f"{name}: internal dest names shown as metavars"
