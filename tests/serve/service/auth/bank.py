"""A guarded entity for the access tests: rules on the commands, a policy on the app."""

from __future__ import annotations

from typing import Any

import msgspec

from runtime import Anyone, App, Authenticated, Claim, Effect, EventSourcedEntity, Policy, applies, command


class Deposited(msgspec.Struct, frozen=True):
    amount: int
    by: str | None  # handlers see the caller: here it becomes part of the fact


class Closed(msgspec.Struct, frozen=True):
    pass


class Account(msgspec.Struct, frozen=True):
    balance: int = 0
    closed: bool = False


class BankAccount(EventSourcedEntity[Account], name="account"):
    initial = Account()

    @command(allow=Claim("role", "teller") | Claim("scope", "bank:write"))
    def deposit(self, state: Account, amount: int) -> Effect[int]:
        if amount <= 0:
            return self.error("amount must be positive")
        by = None if self.caller is None else self.caller.subject
        return self.persist(Deposited(amount, by)).reply(lambda s: s.balance)

    @command(allow=Anyone())
    def balance(self, state: Account) -> Effect[int]:
        return self.reply(state.balance)

    @command
    def whoami(self, state: Account) -> Effect[dict[str, Any]]:  # the policy's default guards it
        caller = self.caller
        return self.reply(None if caller is None else {"subject": caller.subject, "role": caller.claim("role")})

    @command
    def close(self, state: Account) -> Effect[bool]:  # the policy names it: admins only
        return self.persist(Closed()).reply(True)

    @applies
    def deposited(self, state: Account, e: Deposited) -> Account:
        return msgspec.structs.replace(state, balance=state.balance + e.amount)

    @applies
    def was_closed(self, state: Account, e: Closed) -> Account:
        return msgspec.structs.replace(state, closed=True)


app = App(
    "bank",
    entities=[BankAccount],
    policy=Policy(default=Authenticated(), commands={"account.close": Claim("role", "admin")}),
)
open_app = App("bank", entities=[BankAccount])  # the same entity with no policy: only its @command rules
