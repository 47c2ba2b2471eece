"""Two regions on loopback for the regions tests and benchmark: NATS clusters of three JetStream
nodes joined by gateways through TCP proxies (cut and healed like a partition), and a member per
region (SQLite journal, Service, NATS door, Region: replica stream, region door, views).

Every gateway connection goes through a proxy: each node advertises its proxy's port as its
gateway address (`NatsRegions.set_gateway_via`), so `link.cut()` blackholes all traffic between
the regions and nothing else (each region's routes and clients are direct).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from cluster.proxy import Link

from runtime import (
    App,
    Consumer,
    Context,
    Effect,
    Envelope,
    EventSourcedEntity,
    Rows,
    SqliteJournal,
    View,
    applies,
    command,
    on,
)
from runtime.serve.process.local_regions import NatsRegions
from runtime.serve.service import Service
from runtime.serve.service.regions import Region, RegionSettings, region_member
from runtime.wire.nats import close_quietly, connect

REGIONS = ("eu", "us")


class Deposited(msgspec.Struct, frozen=True):
    amount: int


class Balance(msgspec.Struct, frozen=True):
    balance: int = 0


class Account(EventSourcedEntity[Balance], name="account"):
    """Pinned to a region in the tests (`pinned={"account": "eu"}`)."""

    initial = Balance()

    @command
    def deposit(self, b: Balance, amount: int) -> Effect[int]:
        if amount <= 0:
            return self.error("amount must be positive")
        return self.persist(Deposited(amount)).reply(lambda s: s.balance)

    @applies
    def deposited(self, b: Balance, e: Deposited) -> Balance:
        return Balance(b.balance + e.amount)


class Wallet(EventSourcedEntity[Balance], name="wallet"):
    """Not pinned: its primary is the region of its first command."""

    initial = Balance()

    @command
    def deposit(self, b: Balance, amount: int) -> Effect[int]:
        if amount <= 0:
            return self.error("amount must be positive")
        return self.persist(Deposited(amount)).reply(lambda s: s.balance)

    @applies
    def deposited(self, b: Balance, e: Deposited) -> Balance:
        return Balance(b.balance + e.amount)


class Total(msgspec.Struct):
    id: str
    balance: int = 0
    deposits: int = 0


class Totals(View[Total], name="totals", sources=[Account, Wallet]):
    """One row per account and wallet, whichever region writes it."""

    @on
    def deposited(self, rows: Rows[Total], e: Deposited, env: Envelope) -> None:
        key = f"{env.entity_type}/{env.entity_id}"
        row = rows.get(key) or Total(key)
        rows.put(key, Total(key, row.balance + e.amount, row.deposits + 1))


class Bonus(Consumer, name="bonus", sources=[Wallet]):
    """A wallet's deposit of exactly 100 credits 1 to the account named after it (accounts are eu's):
    the consumer runs in the wallet's region and its command reaches the account's."""

    @on
    async def deposited(self, ctx: Context, e: Deposited) -> None:
        if e.amount == 100:
            await ctx.send("account", f"bonus-{ctx.envelope.entity_id}", "deposit", {"amount": 1})


APP = App("regions", entities=[Account, Wallet], views=[Totals], consumers=[Bonus])


@dataclass
class Member:
    """One region's member: its service (writes), NATS door (its own prefix), region (replica, door, views)."""

    name: str
    settings: RegionSettings
    service: Service
    region: Region
    url: str


@dataclass
class Regions:
    nats: NatsRegions
    link: Link
    members: dict[str, Member] = field(default_factory=dict)

    def url(self, region: str) -> str:
        return self.nats.url(region)


def settings_for(region: str, **options: object) -> RegionSettings:
    """`account` pinned to eu; a command crossing regions may take 5 s (not 2): the machine is shared."""
    options = {"remote_timeout": 5.0, **options}
    return RegionSettings(name=region, regions=REGIONS, pinned={"account": "eu"}, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def nats_regions(directory: Path) -> AsyncIterator[tuple[NatsRegions, Link]]:
    """The supercluster, every gateway connection through one `Link` of proxies."""
    nats = NatsRegions(directory, list(REGIONS))
    targets = [port for r in REGIONS for port in nats.gateway_ports[r]]
    link = Link(targets)
    proxy_of = {target: proxy for proxy, target in link.routes}
    nats.set_gateway_via(lambda region, i: proxy_of[nats.gateway_ports[region][i]])
    async with link.running(), nats:
        yield nats, link


@contextlib.asynccontextmanager
async def member(directory: Path, region: str, url: str, **options: object) -> AsyncIterator[Member]:
    """A member of `region`: SQLite journal, Service and NatsDoor on the region's prefix, and its Region."""
    settings = settings_for(region, **options)
    nc = await connect(url, timeout=10, max_reconnect_attempts=-1, reconnect_time_wait=0.25)
    try:
        async with (
            SqliteJournal(directory / f"{region}.db") as journal,
            region_member(APP, journal, nc, settings, workers=32) as m,
        ):
            yield Member(region, settings, m.service, m.region, url)
    finally:
        await close_quietly(nc)


@contextlib.asynccontextmanager
async def two_regions(directory: Path, **options: object) -> AsyncIterator[Regions]:
    """Both regions' NATS clusters, joined by proxied gateways, and a member in each."""
    async with nats_regions(directory / "nats") as (nats, link):
        regions = Regions(nats, link)
        async with contextlib.AsyncExitStack() as stack:
            for r in REGIONS:  # one after the other: the first creates the claims bucket
                regions.members[r] = await stack.enter_async_context(member(directory, r, nats.url(r), **options))
            yield regions
