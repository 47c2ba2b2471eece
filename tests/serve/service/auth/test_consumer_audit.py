"""Commands from inside the process are trusted and record no principal; the chain back to who asked holds.

A consumer reacts to an account's deposit by writing to a ledger nobody outside may touch: the
policy denies the ledger to every token, yet the consumer's command runs; the ledger's event
names no principal, its causation id names the deposit, and the deposit names its caller.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support.served import client, serve
from support.waiting import eventually

from runtime import App, Claim, Consumer, Context, Effect, EventSourcedEntity, Forbidden, Policy, applies, command, on

from .bank import BankAccount, Deposited
from .mint import AUDIENCE, ISSUER, SECRET, claims, hs256

pytestmark = pytest.mark.anyio


class Entry(msgspec.Struct, frozen=True):
    amount: int
    asked_by: str | None


class Book(msgspec.Struct, frozen=True):
    entries: int = 0


class Ledger(EventSourcedEntity[Book], name="ledger"):
    initial = Book()

    @command
    def record(self, state: Book, amount: int, asked_by: str | None) -> Effect[int]:
        return self.persist(Entry(amount, asked_by)).reply(lambda s: s.entries)

    @applies
    def entered(self, state: Book, e: Entry) -> Book:
        return Book(state.entries + 1)


class PostToLedger(Consumer, name="post_to_ledger", sources=[BankAccount]):
    @on
    async def deposited(self, ctx: Context, e: Deposited) -> None:
        await ctx.send("ledger", "main", "record", {"amount": e.amount, "asked_by": ctx.envelope.principal})


app = App(
    "bank",
    entities=[BankAccount, Ledger],
    consumers=[PostToLedger],
    policy=Policy(entities={"account": Claim("role", "teller")}),  # the ledger: the default, nobody
)


async def test_a_consumer_writes_where_no_token_may_and_the_audit_chain_holds(tmp_path: Path) -> None:
    from runtime.serve.service.auth import VerificationKey, Verifier

    verifier = Verifier([VerificationKey.hmac(SECRET)], audience=AUDIENCE, issuer=ISSUER)
    async with serve(app, tmp_path, verifier) as served, client(served, hs256(claims("ann", role="teller"))) as c:
        await c.send("account", "acc-1", "deposit", {"amount": 7})
        with pytest.raises(Forbidden):
            await c.send("ledger", "main", "record", {"amount": 1000, "asked_by": "ann"})

        async def recorded() -> bool:
            return bool(await served.journal.read("ledger", "main"))

        await eventually(recorded, 20, "the consumer's ledger entry")
        entries = await served.journal.read("ledger", "main")
        (deposit,) = await served.journal.read("account", "acc-1")
    (entry,) = entries
    assert deposit.principal == "ann"
    assert entry.principal is None and entry.causation_id == deposit.key
    assert msgspec.json.decode(entry.payload) == {"amount": 7, "asked_by": "ann"}  # the consumer saw who asked
