"""Forget in a cluster of two members: the owner forgets, every member drops its cached key."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support.waiting import eventually

from runtime import App, EntityForgotten, Service, open_journal
from runtime.serve.service.admin import Admin
from runtime.serve.service.cluster import ClusterConfig, LeaseConfig, settled
from runtime.serve.service.embedded_nats import EmbeddedNats

from .people import Note, Person

pytestmark = pytest.mark.anyio


async def test_the_owner_forgets_and_every_member_drops_its_cached_key(tmp_path: Path) -> None:
    app = App("people", entities=[Person, Note])
    config = ClusterConfig(name="shred", shards=8, lease=LeaseConfig(ttl=3.0))
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        open_journal(server.url) as j1,
        open_journal(server.url) as j2,
        Service(app, j1, nats_url=server.url, cluster=config) as one,
        Service(app, j2, nats_url=server.url, cluster=config) as two,
    ):
        assert one.nc is not None
        await settled(one.nc, config, 2)
        admins = [Admin(one), Admin(two)]
        for admin in admins:
            await admin.start()
        try:
            # Ids on both members, whichever shards each holds: placement hashes the members' random ids,
            # so a member may hold one shard of the eight, which a dozen fixed ids can all miss.
            candidates = [f"p{k}" for k in range(400)]

            def spread() -> bool:  # each member's own view of its leases follows the bucket within moments
                owner.update({i: one if one.runtime.host.admits("person", i) else two for i in candidates})  # type: ignore[misc]
                return {id(s) for s in owner.values()} == {id(one), id(two)}

            owner: dict[str, Service] = {}
            await eventually(spread, 15, "the ids spread over both members")
            ids = [i for i in candidates if owner[i] is one][:6] + [i for i in candidates if owner[i] is two][:6]
            for i in ids:
                await owner[i].runtime.ask("person", i, "change", {"email": f"{i}@x"})
            target = ids[0]
            other = two if owner[target] is one else one
            assert other.runtime.keys is not None
            assert await other.runtime.keys.existing("person", target) is not None  # cached on the other member

            msg = await one.nc.request("memoir.admin.forget", b'{"type": "person", "id": "%s"}' % target.encode(), 10)
            assert msgspec.json.decode(msg.data) == {"ok": True, "result": {"forgotten": True, "already": False}}

            async def evicted() -> bool:
                try:
                    await other.runtime.keys.existing("person", target)  # type: ignore[union-attr]
                except EntityForgotten:
                    return True
                return False

            await eventually(evicted, 4, "the broadcast reaching the other member")
            with pytest.raises(Exception, match="forgotten"):
                await owner[target].runtime.ask("person", target, "get")
            for i in ids[1:]:  # the others are untouched
                assert (await owner[i].runtime.ask("person", i, "get")).result.email == f"{i}@x"
        finally:
            for admin in admins:
                await admin.stop()
