"""Access rules and the app policy, in the runtime with no network: which rule guards what, and the answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve.service.auth.bank import BankAccount, app

from runtime import (
    Anyone,
    App,
    Authenticated,
    Caller,
    Claim,
    ConfigError,
    Forbidden,
    MemoryJournal,
    Nobody,
    Policy,
    Runtime,
    Unauthorized,
)
from runtime.model.access import ANONYMOUS, rule_for

pytestmark = pytest.mark.anyio

ANN = Caller("ann", {"sub": "ann", "role": "teller"})


def test_rules_read_claims_lists_and_scopes() -> None:
    assert Claim("role", "teller", "admin").allows(ANN)
    assert not Claim("role", "admin").allows(ANN)
    assert Claim("groups", "ops").allows(Caller("x", {"groups": ["dev", "ops"]}))
    assert Claim("scope", "b").allows(Caller("x", {"scope": "a b c"}))  # OAuth's space-separated scopes
    assert not Claim("scope", "b").allows(Caller("x", {"scope": "a bc"}))
    assert not Claim("role", "teller").allows(Caller("x", {"role": {"nested": "teller"}}))
    assert (Claim("role", "teller") & Authenticated()).allows(ANN)
    assert not (Claim("role", "teller") & Claim("tenant", "t1")).allows(ANN)
    assert (Claim("role", "admin") | (lambda c: c.subject == "ann")).allows(ANN)
    assert Anyone().allows(ANONYMOUS) and not Authenticated().allows(ANONYMOUS) and not Nobody().allows(ANN)
    seen: list[Caller] = []
    assert not (Anyone() & (lambda c: seen.append(c) or True)).allows(ANONYMOUS)
    assert seen == [], "a user predicate never sees an anonymous caller"
    with pytest.raises(ConfigError, match="needs at least one value"):
        Claim("role")


def test_which_rule_guards_a_command() -> None:
    admin = Claim("role", "admin")
    policy = Policy(default=Nobody(), entities={"account": Authenticated()}, commands={"account.close": admin})
    assert rule_for(None, "account", "balance", None) is None  # no policy, no allow: open, as before
    assert rule_for(None, "account", "deposit", Anyone()) == Anyone()
    assert rule_for(policy, "account", "close", Anyone()) == admin  # the app's word on one command wins
    assert rule_for(policy, "account", "deposit", Anyone()) == Anyone()  # then the handler's own rule
    assert rule_for(policy, "account", "whoami", None) == Authenticated()  # then the entity type's
    assert rule_for(policy, "other", "x", None) == Nobody()  # then the default: deny
    assert rule_for(Policy(), "account", "whoami", None) == Nobody()


def test_a_policy_naming_what_the_app_lacks_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"policy: no command 'account.withdraw'"):
        App("bank", entities=[BankAccount], policy=Policy(commands={"account.withdraw": Anyone()}))
    with pytest.raises(ConfigError, match=r"policy: no entity type 'acount'"):
        App("bank", entities=[BankAccount], policy=Policy(entities={"acount": Anyone()}))
    with pytest.raises(ConfigError, match="an access rule is a Rule"):
        App("bank", entities=[BankAccount], policy=Policy(default="admin"))  # type: ignore[arg-type]


async def test_the_runtime_checks_callers_from_outside_and_trusts_its_own() -> None:
    async with Runtime(app, MemoryJournal()) as rt:
        with pytest.raises(Unauthorized):
            await rt.ask("account", "a", "deposit", {"amount": 1}, caller=ANONYMOUS)
        with pytest.raises(Forbidden):
            await rt.ask("account", "a", "deposit", {"amount": 1}, caller=Caller("bob", {"role": "clerk"}))
        with pytest.raises(Unauthorized):  # checked before the payload is read: a stranger learns nothing of it
            await rt.ask("account", "a", "deposit", {"amount": "lots"}, caller=ANONYMOUS)
        assert (await rt.ask("account", "a", "deposit", {"amount": 2}, caller=ANN)).result == 2
        assert (await rt.ask("account", "a", "deposit", {"amount": 3})).result == 5  # from inside: trusted
        assert (await rt.ask("account", "a", "close")).result is True
        events = await rt.journal.read("account", "a")
        assert [e.principal for e in events] == ["ann", None, None]


def test_the_testkit_runs_commands_as_a_caller() -> None:
    from runtime.testing import EntityTestKit

    kit = EntityTestKit(BankAccount, "a").acting_as(ANN)
    assert kit.when("deposit", amount=3).events[0].by == "ann"  # type: ignore[attr-defined]
    assert kit.acting_as(None).when("deposit", amount=1).events[0].by is None  # type: ignore[attr-defined]


def test_a_wrong_allow_fails_where_it_is_written() -> None:
    from runtime import command

    with pytest.raises(ConfigError, match="an access rule is a Rule"):
        command(allow="admin")


async def test_the_test_harness_serves_with_a_verifier(tmp_path: Path) -> None:
    from serve.service.auth.mint import AUDIENCE, ISSUER, SECRET, claims, hs256

    from runtime import Client
    from runtime.serve.service import EmbeddedNats
    from runtime.serve.service.auth import VerificationKey, Verifier
    from runtime.testing.harness import served

    verifier = Verifier([VerificationKey.hmac(SECRET)], audience=AUDIENCE, issuer=ISSUER)
    async with (
        EmbeddedNats(tmp_path / "nats") as server,
        served(app, server.url, prefix="t1", verifier=verifier) as svc,
        Client(server.url, prefix="t1", token=hs256(claims("ann", role="teller"))) as c,
    ):
        await c.send("account", "a", "deposit", {"amount": 1})
        with pytest.raises(Unauthorized, match="expired"):
            await c.send("account", "a", "deposit", {"amount": 1}, token=hs256(claims(exp=1)))
        assert [e.principal for e in await svc.journal.read("account", "a")] == ["ann"]
