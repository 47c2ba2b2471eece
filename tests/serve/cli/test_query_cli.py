"""`memoir query VIEW --where … --order-by … --limit … --page … --count` against a real `memoir run`."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from support.process import RunningRuntime
from support.waiting import eventually_sync


def test_query_a_view_by_its_fields(tmp_path: Path) -> None:
    rt = RunningRuntime(tmp_path / "data", "tests.serve.cli.views_app:app").start()
    try:
        for i in range(7):  # ann 3 posts, bob 2, cy 1, dan 1
            author = ["ann", "bob", "ann", "cy", "bob", "ann", "dan"][i]
            sent = rt.cli("send", "post", f"p{i}", "publish", json.dumps({"author": author, "text": "x"}))
            assert sent.returncode == 0, sent.stderr
        eventually_sync(
            lambda: rt.cli("query", "authors", "--count", "--json").stdout.strip() == '{"count":4}',
            what="the view to hold four authors",
        )
        top = rt.cli("query", "authors", "--where", "posts >= 2", "--order-by", "posts desc", "--limit", "1")
        assert top.returncode == 0, top.stderr
        lines = top.stdout.splitlines()
        assert lines[:2] == ["KEY  AUTHOR  POSTS  LATEST", "ann  ann     3      p5"]
        assert lines[2].startswith("next page: --page ")
        token = lines[2].removeprefix("next page: --page ")
        rest = rt.cli(
            "query", "authors", "--where", "posts >= 2", "--order-by", "posts desc", "--page", token, "--json"
        )
        assert [json.loads(x) for x in rest.stdout.splitlines()] == [
            {"key": "bob", "row": {"author": "bob", "posts": 2, "latest": "p4"}}
        ]
        either = rt.cli("query", "authors", "--where", 'author in ("cy", "dan") or author prefix "b"', "--count")
        assert either.stdout.strip() == "3"

        undeclared = rt.cli("query", "authors", "--where", 'latest = "p1"')
        assert undeclared.returncode == 1 and undeclared.stdout == ""
        assert undeclared.stderr.startswith("memoir: invalid: view authors: field 'latest' is not declared")
        typo = rt.cli("query", "authors", "--where", "posts >>= 2")
        assert typo.returncode == 1 and "memoir: invalid: where:" in typo.stderr
    finally:
        assert rt.stop(signal.SIGTERM) == 0, "a graceful shutdown exits 0"
