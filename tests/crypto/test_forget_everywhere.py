"""Forget over NATS against a running service: streams hold ciphertext, rebuilt views no trace, exports say so."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
from support.waiting import eventually

from runtime import App, Consumer, Context, Service, SqliteJournal, SqliteViewStore, on
from runtime.model.sealing import is_sealed
from runtime.serve.cli.main import main
from runtime.serve.process.datadir import lock_data_dir
from runtime.serve.service.admin import Admin
from runtime.serve.service.embedded_nats import EmbeddedNats
from runtime.wire.protocol import stream_name

from .people import MARKER, EmailChanged, Note, Person, app

pytestmark = pytest.mark.anyio


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _admin(nc: Any, payload: bytes) -> dict[str, Any]:
    msg = await nc.request("memoir.admin.forget", payload, timeout=10)
    return msgspec.json.decode(msg.data)  # type: ignore[no-any-return]


async def test_forget_over_nats_then_views_streams_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "journal.db"
    where = ("--data-dir", str(tmp_path / "data"), "--journal", f"sqlite:///{db}", "--app", "crypto.people:app")
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        SqliteJournal(db) as journal,
        SqliteViewStore(tmp_path / "views.db") as store,
        Service(app, journal, nats_url=server.url, view_store=store) as svc,
    ):
        admin = Admin(svc)
        await admin.start()
        try:
            for who in ("ann", "bob"):
                await svc.runtime.ask("person", who, "change", {"email": f"{who}-{MARKER}@x"})
            await svc.runtime.ask("note", "n1", "add", {"text": "plain"})
            emails = svc.view("emails")

            async def both() -> bool:
                return set(await emails.all()) == {"ann", "bob"}

            await eventually(both, what="the view to hold both people")
            assert (await emails.get("ann")) is not None and MARKER in (await emails.get("ann")).email  # type: ignore[union-attr]

            # the JetStream stream holds ciphertext only
            js = svc.nc.jetstream()  # type: ignore[union-attr]
            published = [await js.get_msg(stream_name("memoir", "person"), s) for s in (1, 2)]
            assert all(is_sealed(m.data) and MARKER.encode() not in m.data for m in published)

            # bad requests: a clear error each, nothing stored
            last = await journal.last_position()
            nc = svc.nc
            cases = [
                (b'{"type": "ghost", "id": "x"}', "unknown_entity_type"),
                (b'{"type": "note", "id": "n1"}', "invalid"),
                (b'{"type": "person", "id": "nobody"}', "rejected"),
                (b'{"type": "person"}', "invalid"),
                (b"not json", "invalid"),
                (b'{"type": "person", "id": "ann", "extra": 1}', "invalid"),
            ]
            for payload, code in cases:
                answer = await _admin(nc, payload)
                assert answer["ok"] is False and answer["error"]["code"] == code, (payload, answer)
            assert await journal.last_position() == last
            assert (await svc.runtime.ask("person", "ann", "get")).result.email == f"ann-{MARKER}@x"

            code, out, err = await _cli(capsys, "forget", "person", "ann", "--nats-url", server.url, *where)
            assert code == 0, err
            assert "person/ann forgotten" in out
            again = await _admin(nc, b'{"type": "person", "id": "ann"}')
            assert again == {"ok": True, "result": {"forgotten": True, "already": True}}

            with pytest.raises(Exception, match="forgotten") as gone:
                await svc.runtime.ask("person", "ann", "get")
            assert getattr(gone.value, "code", None) == "forgotten"
            assert (await svc.runtime.ask("person", "bob", "get")).result.email == f"bob-{MARKER}@x"

            # the view drops ann's row on the Forgotten event; rebuilt, it holds no trace of ann either

            async def only_bob() -> bool:
                return set(await emails.all()) == {"bob"}

            await eventually(only_bob, what="the view to handle the Forgotten event")
            assert await svc.replay("emails")
            await eventually(only_bob, what="the rebuilt view")
            assert svc.views["emails"].forgotten == 1  # ann's sealed event, skipped on the rebuild
            assert await journal.last_position() == last + 1  # the Forgotten event, nothing else
        finally:
            await admin.stop()

    # offline readers: the journal as export and history
    code, out, err = await _cli(capsys, "export", *where)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["entity_type"], r["entity_id"], r["seq"], r["position"], r["event"]) for r in rows] == [
        ("person", "ann", 1, 1, "EmailChanged"),
        ("person", "bob", 1, 2, "EmailChanged"),
        ("note", "n1", 1, 3, "Noted"),
        ("person", "ann", 2, 4, "memoir.Forgotten"),
    ]
    assert rows[3]["payload"] == {}
    assert rows[0]["payload"] is None and rows[0]["forgotten"] is True and rows[0]["event"] == "EmailChanged"
    assert rows[1]["payload"] is None and "forgotten" not in rows[1] and MARKER not in out  # an archive stays sealed
    assert base64.b64decode(rows[1]["sealed"])[:2] == b"\x00\x01"
    assert rows[2]["payload"] == {"text": "plain"}
    code, out, err = await _cli(capsys, "export", "--decrypt", *where)
    opened = [json.loads(line) for line in out.splitlines()]
    assert [r["payload"] for r in opened] == [None, {"email": f"bob-{MARKER}@x"}, {"text": "plain"}, {}]
    assert opened[0]["forgotten"] is True

    code, out, err = await _cli(capsys, "events", "person", "ann", *where)
    assert code == 0 and "EmailChanged" in out and "(forgotten)" in out and MARKER not in out
    code, out, err = await _cli(capsys, "state", "person", "ann", *where)
    assert code == 1 and "memoir: forgotten: person/ann was forgotten" in err
    code, out, err = await _cli(capsys, "state", "person", "bob", *where, "--json")
    assert code == 0 and json.loads(out)["state"]["email"] == f"bob-{MARKER}@x"

    # a tampered payload: the export names it in its row, goes on, and exits 1; the journal is unchanged
    with sqlite3.connect(db) as conn:
        (payload,) = conn.execute("SELECT payload FROM events WHERE position=2").fetchone()
        conn.execute("UPDATE events SET payload=? WHERE position=2", (payload[:-1] + bytes([payload[-1] ^ 1]),))
    code, out, err = await _cli(capsys, "export", *where)
    assert code == 1 and "memoir: unreadable: 1 sealed payloads did not open" in err
    bad = [json.loads(line) for line in out.splitlines()]
    assert len(bad) == 4 and "event person/bob/1 (EmailChanged)" in bad[1]["error"]
    with sqlite3.connect(db) as conn:  # put it back
        conn.execute("UPDATE events SET payload=? WHERE position=2", (payload,))

    # --offline refuses while a runtime holds the data dir; with none running it forgets on the journal itself
    with lock_data_dir(tmp_path / "data", "a runtime"):
        code, out, err = await _cli(capsys, "forget", "person", "bob", "--offline", *where)
    assert code == 2 and "memoir: locked:" in err
    code, out, err = await _cli(capsys, "forget", "person", "bob", "--offline", *where)
    assert code == 0, err
    code, out, err = await _cli(capsys, "forget", "note", "n1", "--offline", *where)
    assert code == 1 and "memoir: invalid: entity type 'note' is not encrypted" in err
    code, out, err = await _cli(capsys, "export", *where)
    assert [json.loads(line).get("forgotten", False) for line in out.splitlines()] == [True, True, False, False, False]


class SeenEmails(Consumer, name="seen_emails", sources=[Person]):
    seen: ClassVar[list[str]] = []

    @on
    async def changed(self, ctx: Context, e: EmailChanged) -> None:
        SeenEmails.seen.append(e.email)


async def test_a_consumer_skips_the_events_of_a_forgotten_entity(tmp_path: Path) -> None:
    entities = [Person, Note]
    async with EmbeddedNats(tmp_path / "nats") as server, SqliteJournal(tmp_path / "journal.db") as journal:
        async with Service(App("before", entities=entities), journal, nats_url=server.url) as svc:
            for who in ("ann", "bob"):
                await svc.runtime.ask("person", who, "change", {"email": f"{who}@x"})
            assert await svc.runtime.forget("person", "ann")
        app2 = App("after", entities=entities, consumers=[SeenEmails])
        async with Service(app2, journal, nats_url=server.url) as svc:
            runner = svc.consumers["seen_emails"]

            async def all_taken() -> bool:  # bob's change, ann's sealed change, ann's Forgotten event
                return runner.handled + runner.forgotten == 3

            await eventually(all_taken, what="the consumer to take every event")
            assert SeenEmails.seen == ["bob@x"]
            assert (runner.forgotten, runner.dead_lettered, runner.retried) == (1, 0, 0)
