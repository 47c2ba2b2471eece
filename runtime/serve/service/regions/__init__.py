"""Regions: NATS clusters joined by gateways, each entity written in one primary region and read in all.

See docs/guides/regions.md. `settings` (names and the primary rule), `replication` (the replica
stream: JetStream sourcing), `replica` (that stream read as a read-only journal), `primary`
(which region writes an entity), `door` (commands reach the primary region), `region` (the
region's part of a process).
"""

from .door import RegionDoor
from .member import Fence, RegionMember, region_member, route_commands
from .moves import MoveDoor, MoveError, move
from .primary import Primaries
from .region import Region, regional_app
from .replica import ReadOnly, ReplicaJournal
from .replication import ensure_replica, replica_config, replica_stream
from .sending import RegionSender
from .settings import RegionSettings

__all__ = [
    "Fence",
    "MoveDoor",
    "MoveError",
    "Primaries",
    "ReadOnly",
    "Region",
    "RegionDoor",
    "RegionMember",
    "RegionSender",
    "RegionSettings",
    "ReplicaJournal",
    "ensure_replica",
    "move",
    "region_member",
    "regional_app",
    "replica_config",
    "replica_stream",
    "route_commands",
]
