"""The HTTP port's operations routes against a real `memoir run --http-port`: `/healthz` and
`/readyz` for probes, without a credential; dead letters listed, shown, replayed and purged with
the data dir's token, and refused without it."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from support.deadletter_app import FIX_FILE
from support.process import RunningRuntime
from support.waiting import eventually

from runtime.serve.process.http_token import read_http_token
from runtime.serve.service.embedded_nats import free_port

pytestmark = pytest.mark.anyio


async def test_probes_and_dead_letters_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fix = tmp_path / "fixed"
    monkeypatch.setenv(FIX_FILE, str(fix))
    port = free_port()
    rt = RunningRuntime(tmp_path / "data", "tests.support.deadletter_app:app", "--http-port", str(port)).start()
    token = read_http_token(rt.data)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as anyone:
            for probe, body in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
                answer = await anyone.get(probe)
                assert (answer.status_code, answer.text) == (200, body)
            refused = await anyone.get("/deadletters/tally")
            assert refused.status_code == 401
            assert (await anyone.post("/deadletters/tally/replay")).status_code == 401

        owner = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {token}"}
        )
        async with owner:
            for post in ("bad-1", "bad-2"):
                sent = await owner.post(f"/post/{post}/publish", json={"author": "ann", "text": "poison"})
                assert sent.status_code == 200, sent.text

            async def parked() -> list[dict[str, object]]:
                answer = await owner.get("/deadletters/tally")
                assert answer.status_code == 200, answer.text
                result: list[dict[str, object]] = answer.json()["result"]
                return result

            await eventually(lambda: _two(parked), what="both poison posts parked")
            first, second = (int(str(p["seq"])) for p in await parked())
            assert [p["seq"] for p in (await owner.get(f"/deadletters/tally?after={first}")).json()["result"]] == [
                second
            ]
            shown = (await owner.get(f"/deadletters/tally/{first}")).json()["result"]
            assert shown["event"] == "post/bad-1/1" and shown["payload"] == {"author": "ann", "text": "poison"}

            fix.touch()
            one = await owner.post(f"/deadletters/tally/{first}/replay")
            assert one.json()["result"] == {"replayed": [first], "failed": []}
            assert (await owner.get(f"/deadletters/tally/{first}")).status_code == 404
            assert (await owner.delete("/deadletters/tally")).json()["result"] == {"purged": 1}
            assert (await owner.get("/deadletters/tally")).json()["result"] == []
            audit = (await owner.get("/profile/audit")).json()
            assert audit["result"]["posts"] == 1, audit  # the replayed post counted; the purged one not

            assert (await owner.get("/deadletters/nope")).status_code == 404
            assert (await owner.get("/deadletters/tally/x1")).status_code == 400
            assert (await owner.put("/deadletters/tally")).status_code == 405
    finally:
        assert rt.stop(signal.SIGTERM) == 0


async def _two(parked: object) -> bool:
    assert callable(parked)
    return len(await parked()) == 2
