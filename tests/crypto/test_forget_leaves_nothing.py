"""After a forget, no file a runtime writes holds the plaintext: not the journal, the view store,
their WALs, nor the NATS store — checked while everything still runs, before any clean shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.waiting import eventually

from runtime import Service, SqliteJournal, SqliteViewStore
from runtime.serve.service.embedded_nats import EmbeddedNats

from .people import MARKER, app

pytestmark = pytest.mark.anyio


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


async def test_no_file_under_the_data_dir_holds_a_forgotten_plaintext(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    secret = f"ann-{MARKER}@x".encode()
    async with (
        EmbeddedNats(data / "nats") as server,
        SqliteJournal(data / "journal.db") as journal,
        SqliteViewStore(data / "views.db") as store,
        Service(app, journal, nats_url=server.url, view_store=store) as svc,
    ):
        emails = svc.view("emails")
        for n in range(20):  # many row versions: every one of them went through the view store's WAL
            await svc.runtime.ask("person", "ann", "change", {"email": f"ann-{MARKER}@x"})
            await svc.runtime.ask("person", "bob", "change", {"email": f"bob-{n}@x"})

        async def ann_in_view() -> bool:
            row = await emails.get("ann")
            return row is not None and row.email == f"ann-{MARKER}@x"

        await eventually(ann_in_view, what="the view to hold ann's address")
        assert files_holding(data, secret), "the view store should hold ann's address before the forget"

        assert await svc.runtime.forget("person", "ann")

        async def ann_gone() -> bool:
            return await emails.get("ann") is None

        await eventually(ann_gone, what="the view to drop ann on the Forgotten event")
        # the scrub follows the view's commit of the Forgotten event: no file may hold it afterwards
        await eventually(lambda: not files_holding(data, secret), what=f"{files_holding(data, secret)} scrubbed")
        assert (await emails.get("bob")) is not None  # nothing else was lost
