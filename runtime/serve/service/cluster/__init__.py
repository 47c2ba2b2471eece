"""Scale-out: shards of the entity space, one owner each (a member lease plus an allocation with
epochs in NATS KV, placement.py), spread over live members.

Standalone building blocks (the NATS door and the service wire them in): `Cluster.join` for a
process's membership and buckets, `ShardManager` for its share of the shards, `Singleton` for
work that runs once in the cluster, `snapshot` for `memoir cluster`.
"""

from .allocation import Allocation, AllocationTable
from .coordinator import Cluster, ClusterConfig
from .leases import LeaseConfig, Leases
from .member_lease import MemberLease
from .membership import MemberInfo, Membership, new_member_id
from .placement import ShardManager, assign, owner
from .shards import DEFAULT_SHARDS, shard_key, shard_of
from .singleton import Singleton
from .snapshot import ClusterSnapshot, settled, snapshot

__all__ = [
    "DEFAULT_SHARDS",
    "Allocation",
    "AllocationTable",
    "Cluster",
    "ClusterConfig",
    "ClusterSnapshot",
    "LeaseConfig",
    "Leases",
    "MemberInfo",
    "MemberLease",
    "Membership",
    "ShardManager",
    "Singleton",
    "assign",
    "new_member_id",
    "owner",
    "settled",
    "shard_key",
    "shard_of",
    "snapshot",
]
