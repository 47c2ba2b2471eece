"""`memoir cluster` for people: tables with header rows, ages as people write them."""

from __future__ import annotations

from runtime.serve.cli.commands.cluster import render
from runtime.serve.service.cluster import ClusterSnapshot
from runtime.serve.service.cluster.snapshot import LeaseView, MemberView


def test_members_and_singletons_are_tables_and_ages_read_as_words() -> None:
    snap = ClusterSnapshot(
        shard_count=4,
        members=[
            MemberView(id="m-1", host="n1", pid=101, up_s=303.2, heartbeat_age_s=0.4, shards=2),
            MemberView(id="m-22", host="n2", pid=7, up_s=7260, heartbeat_age_s=2.5, shards=2),
        ],
        shards_per_member={"m-1": [0, 1], "m-22": [2, 3]},
        unowned_shards=[],
        singletons={"relay": LeaseView(key="singleton.relay", owner="m-1", age_s=1.2, held_s=300)},
        leases=[LeaseView(key="shard.0", owner="m-1", age_s=1.7, held_s=300)],
    )
    assert render(snap).split("\n") == [
        "shards: 4, unowned: 0, oldest shard lease renewed 1s ago",
        "",
        "MEMBER  HOST  PID  SHARDS  UP     HEARTBEAT",
        "m-1     n1    101  2       5m 3s  0s ago",
        "m-22    n2    7    2       2h 1m  2s ago",
        "",
        "SINGLETON  OWNER  RENEWED",
        "relay      m-1    1s ago",
    ]
