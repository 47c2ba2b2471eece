"""One real three-node NATS cluster for the cluster tests (started once: it takes seconds), a
fresh cluster name per test so each starts with empty buckets, and a prefix (and PostgreSQL
schema) per `memoir run --cluster` scenario. `deployment` is the feature app as one process
and as three members (one test module's tests share each); `three_members` the latter alone."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from support.cluster import TTL
from support.deployment import KINDS, Deployment, deployed

from runtime.serve.service.cluster import ClusterConfig, LeaseConfig

from .natscluster import NatsCluster


@pytest.fixture(scope="session")
async def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    async with NatsCluster(Path(tmp_path_factory.mktemp("natscluster"))) as cluster:
        yield cluster


_names = itertools.count()


@pytest.fixture
def config() -> ClusterConfig:
    return ClusterConfig(name=f"t{next(_names)}x{int(time.time()) % 100000}", replicas=3, lease=LeaseConfig(ttl=TTL))


_runs = itertools.count()


@pytest.fixture
async def prefix() -> str:
    return f"cl{next(_runs)}x{os.getpid() % 10000}"


@pytest.fixture
async def pg_schema(prefix: str, postgres_url: str) -> AsyncIterator[str]:
    yield prefix
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {prefix} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(scope="module", params=KINDS)
async def deployment(
    request: pytest.FixtureRequest, nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    """The feature app as one `memoir run` and as three `--cluster` members: a scenario runs on both."""
    async with deployed(request.param, nats_cluster.urls, tmp_path_factory.mktemp("deployment")) as d:
        yield d


@pytest.fixture(scope="module")
async def three_members(
    nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    async with deployed(KINDS[1], nats_cluster.urls, tmp_path_factory.mktemp("members"), http=True) as d:
        yield d
