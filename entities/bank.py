"""Accounts, and a funds transfer between two of them as a workflow (a saga).

The transfer withdraws from the source, deposits to the target, and if the target refuses
the deposit (a closed account) refunds the source. Each step's commands carry ids derived
from the transfer, the step and its visit, so a step re-run after a crash, a timeout or a
retry never moves the money twice.

`SweepClosed` starts a transfer from a consumer: when an account closes, what is left in it
moves to the bank's own account, by a transfer whose id is derived from the event.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from runtime import (
    Calls,
    Consumer,
    Context,
    Effect,
    EventSourcedEntity,
    Recovery,
    Rejected,
    Run,
    StepEffect,
    Workflow,
    WorkflowSettings,
    applies,
    command,
    on,
    step,
)

# -- account ---------------------------------------------------------------------------------------

# in the type, so the decoder refuses 0 (`invalid`, naming `$.amount`) and the schemas show it
Cents = Annotated[int, msgspec.Meta(gt=0, le=10**15, description="whole cents, more than 0")]


class Deposited(msgspec.Struct, frozen=True):
    amount: int


class Withdrawn(msgspec.Struct, frozen=True):
    amount: int


class Closed(msgspec.Struct, frozen=True):
    balance: int = 0  # what was left in the account (withdrawals still work; deposits do not)


class Balance(msgspec.Struct, frozen=True):
    balance: int = 0
    closed: bool = False


class Account(EventSourcedEntity[Balance], name="account"):
    """Money in whole cents; never below zero; a closed account takes no deposits."""

    initial = Balance()

    @command
    def deposit(self, b: Balance, amount: Cents) -> Effect[int]:
        if b.closed:
            return self.error(f"account {self.entity_id} is closed")
        return self.persist(Deposited(amount)).reply(lambda s: s.balance)

    @command
    def withdraw(self, b: Balance, amount: Cents) -> Effect[int]:
        if amount > b.balance:
            return self.error(f"insufficient funds: {b.balance} < {amount}", details={"balance": b.balance})
        return self.persist(Withdrawn(amount)).reply(lambda s: s.balance)

    @command
    def close(self, b: Balance) -> Effect[int]:
        return self.reply(b.balance) if b.closed else self.persist(Closed(b.balance)).reply(lambda s: s.balance)

    @command
    def get(self, b: Balance) -> Effect[Balance]:
        return self.reply(b)

    @applies
    def deposited(self, b: Balance, e: Deposited) -> Balance:
        return msgspec.structs.replace(b, balance=b.balance + e.amount)

    @applies
    def withdrawn(self, b: Balance, e: Withdrawn) -> Balance:
        return msgspec.structs.replace(b, balance=b.balance - e.amount)

    @applies
    def closed_(self, b: Balance, e: Closed) -> Balance:
        return msgspec.structs.replace(b, closed=True)


# -- transfer ---------------------------------------------------------------------------------------


class TransferState(msgspec.Struct, frozen=True):
    source: str = ""
    target: str = ""
    amount: int = 0
    outcome: str = ""  # "", "done", "refunded", "refused"


class Transfer(Workflow[TransferState], name="transfer"):
    initial = TransferState()
    # Infrastructure trouble (a timeout, an unavailable journal) is retried; a business refusal is
    # handled by the step itself.
    settings = WorkflowSettings(step_timeout=5.0, recovery=Recovery(max_retries=5, backoff=0.2))

    @command
    def start(self, run: Run, source: str, target: str, amount: Cents) -> Effect[str]:
        if source == target:
            return self.error("source and target must differ", code="invalid")
        return self.begin(run, TransferState(source, target, amount), "withdraw")

    @step
    async def withdraw(self, s: TransferState, calls: Calls) -> StepEffect:
        try:
            await calls.send("account", s.source, "withdraw", {"amount": s.amount})
        except Rejected as no:
            return self.end(msgspec.structs.replace(s, outcome="refused"), failed=no.message)
        return self.transition_to("deposit")

    @step
    async def deposit(self, s: TransferState, calls: Calls) -> StepEffect:
        try:
            await calls.send("account", s.target, "deposit", {"amount": s.amount})
        except Rejected:
            return self.transition_to("refund")
        return self.end(msgspec.structs.replace(s, outcome="done"))

    @step(recovery=Recovery(max_retries=20, backoff=0.2, max_backoff=5.0))
    async def refund(self, s: TransferState, calls: Calls) -> StepEffect:
        await calls.send("account", s.source, "deposit", {"amount": s.amount})
        return self.end(msgspec.structs.replace(s, outcome="refunded"))


# -- a workflow started by a consumer ---------------------------------------------------------------

BANK = "bank"  # the bank's own account, where closed accounts' balances go


class SweepClosed(Consumer, name="sweep_closed", sources=[Account]):
    """A closed account's balance moves to the bank's account, by a transfer.

    The transfer's id is derived from the event (`close-{account}-{seq}`), so an event delivered
    again starts the same transfer, which starts once, whatever the command id says.
    """

    @on
    async def closed(self, ctx: Context, e: Closed) -> None:
        env = ctx.envelope
        if e.balance > 0 and env.entity_id != BANK:
            args = {"source": env.entity_id, "target": BANK, "amount": e.balance}
            await ctx.send("transfer", f"close-{env.entity_id}-{env.seq}", "start", args)
