"""Which shard an entity belongs to, and the shard count a cluster was started with.

The hash must give the same answer in every process of a cluster, whatever its Python
version or machine: Python's `hash()` is salted per process, so blake2b of the UTF-8 bytes.
The shard count is fixed for the life of a cluster (changing it would move entities while
their owners still serve them), so the first member records it and the others check it.
"""

from __future__ import annotations

import hashlib

from ....model.errors import ConfigError

DEFAULT_SHARDS = 256
MAX_SHARDS = 65536
SHARD_COUNT_KEY = "cluster.shards"


def check_shard_count(count: int) -> int:
    if not 1 <= count <= MAX_SHARDS:
        raise ConfigError(f"shard count must be between 1 and {MAX_SHARDS}, got {count}")
    return count


def shard_of(entity_type: str, entity_id: str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of (type, id) in [0, shards); a NUL separates the two so ("ab", "c") != ("a", "bc")."""
    digest = hashlib.blake2b(f"{entity_type}\0{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_key(shard: int) -> str:
    """The lease key of a shard; zero-padded so the keys sort in shard order."""
    return f"shard.{shard:05d}"


def shard_from_key(key: str) -> int | None:
    prefix, _, number = key.partition(".")
    return int(number) if prefix == "shard" and number.isdigit() else None


def mismatch(recorded: int, given: int) -> ConfigError:
    return ConfigError(
        f"this cluster was started with {recorded} shards but this process was given {given}: "
        f"start every member with {recorded} shards (the count cannot change while the cluster has data)"
    )
