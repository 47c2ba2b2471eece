"""What a process needs to know about regions: which one it is in, the others, and the primary rule.

A region is a NATS cluster (its cluster name is the region's name) with its own members and
journal; gateways join the regions into one supercluster. Names:

- `{prefix}` (the global prefix) is what clients use: commands on `{prefix}.cmd.{type}.{id}.{command}`
  in any region reach the entity's primary region through that region's door (`door.py`);
- `{prefix}.r.{region}` is the region's own service prefix: its members serve commands and
  publish their events there (`{prefix}.r.{region}.events.{type}.{id}`), each region the only
  writer of its own streams;
- `{PREFIX}_REGION_{NAME}` is the region's replica stream, placed in its own cluster: every
  region's events, sourced and renamed to `{prefix}.events.{type}.{id}` (`replication.py`).

The primary of an entity (the one region that writes it): its type's pinned region when
`pinned` names one; otherwise the region the entity's first command was sent in, claimed once
in a KV bucket placed in the `home` region (`primary.py`).
"""

from __future__ import annotations

import re

import msgspec

from ....model.errors import ConfigError
from ....wire.protocol import check_prefix

_REGION = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_region(name: str) -> str:
    """A region's name is a NATS cluster name and one subject token: lower-case letters, digits, `_`, `-`."""
    if not _REGION.match(name):
        raise ConfigError(f"region name {name!r} must match {_REGION.pattern}")
    return name


class RegionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`RegionSettings(name="eu", regions=("eu", "us"), pinned={"account": "eu"})`."""

    name: str  # this process's region
    regions: tuple[str, ...]  # every region, this one included
    prefix: str = "memoir"  # the global prefix clients send to and replicated events carry
    pinned: dict[str, str] = msgspec.field(default_factory=dict)  # entity type -> its primary region
    home: str | None = None  # the region holding the first-write claims (default: the first region)
    remote_timeout: float = 2.0  # seconds a command forwarded to another region may take before `unavailable`
    local_timeout: float = 10.0  # seconds a command served in this region may take
    replicas: int = 3  # of the replica stream and the claims bucket, inside one region's cluster

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        for region in self.regions:
            check_region(region)
        if self.name not in self.regions:
            raise ConfigError(f"region {self.name!r} is not one of {list(self.regions)}")
        for entity_type, region in self.pinned.items():
            if region not in self.regions:
                raise ConfigError(f"{entity_type} is pinned to {region!r}, not one of {list(self.regions)}")
        if self.home is not None and self.home not in self.regions:
            raise ConfigError(f"home region {self.home!r} is not one of {list(self.regions)}")

    def region_prefix(self, region: str | None = None) -> str:
        """The service prefix of `region` (this one by default): `{prefix}.r.{region}`."""
        return f"{self.prefix}.r.{region or self.name}"

    def cluster_name(self) -> str:
        """The name of this region's cluster, when it has several members (its KV buckets of shards,
        leases and singletons): the region's prefix, as a bucket name allows."""
        return self.region_prefix().replace(".", "_")

    @property
    def home_region(self) -> str:
        return self.home or self.regions[0]
