"""A member is given shards only once it says it can serve them (`Service(take_shards=False)`).

`memoir run` starts its transport after the service; a member seen by its peers before then
was given shards whose commands the peers forwarded to it and found no one to answer, until
their senders gave up (the three-runtime test saw "no reply within 5 s" at the start of its
steady phase).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from crypto.people import Note, Person

from runtime import App, Service, open_journal
from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, settled, snapshot
from runtime.serve.service.embedded_nats import EmbeddedNats

pytestmark = pytest.mark.anyio


async def test_a_member_is_seen_and_given_shards_only_once_it_takes_them(tmp_path: Path) -> None:
    app = App("people", entities=[Person, Note])
    config = ClusterConfig(name="late", shards=8, lease=LeaseConfig(ttl=2.0))
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        open_journal(server.url) as j1,
        open_journal(server.url) as j2,
        Service(app, j1, nats_url=server.url, cluster=config) as one,
        Service(app, j2, nats_url=server.url, cluster=config, take_shards=False) as two,
    ):
        assert one.nc is not None and one.cluster is not None and two.cluster is not None and two.shards is not None
        await settled(one.nc, config, 1)
        seen = await snapshot(one.nc, config)
        assert [m.id for m in seen.members] == [one.cluster.member_id]  # `two` is not in the bucket at all
        assert len(seen.shards_per_member[one.cluster.member_id]) == 8
        assert not two.shards.held()

        await two.take_shards()
        await two.take_shards()  # idempotent
        seen = await settled(one.nc, config, 2)
        assert {m.id for m in seen.members} == {one.cluster.member_id, two.cluster.member_id}
        assert two.shards.held()
