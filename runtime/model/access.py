"""Who may send which command: the caller, access rules, and the app's policy.

A `Caller` is what the front door verified (the JWT's subject and claims) and rides with
a command into the entity's turn; handlers read it as `self.caller`. Rules are small
declarative values (`Claim("role", "admin")`, `Authenticated()`, `Anyone()`) or any
callable over a verified caller, combined with `|` and `&`, as Akka SDK's ACL matchers are.

Which rule guards a command, most specific first: the policy's `commands["type.command"]`,
then the handler's `@command(allow=...)`, then the policy's `entities["type"]`, then the
policy's `default` (deny). With no policy only `@command(allow=...)` rules apply, and
everything else is open, as before access rules existed.

A command that reaches the runtime with no caller at all (`caller=None`: sent from inside
the process by a consumer, a timer or code holding the `Runtime`) is trusted and not
checked; one from the front door always carries a `Caller`, `ANONYMOUS` when it had no token.
An anonymous caller is refused with `unauthorized` (send a token), a verified one the rule
does not allow with `forbidden`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgspec

from .errors import ConfigError, ErrorCode, Forbidden, Unauthorized


class Caller(msgspec.Struct, frozen=True):
    """A command's sender as the front door verified it: the token's subject and all its claims.

    `subject` is None for `ANONYMOUS`, a request that carried no token.
    """

    subject: str | None = None
    claims: Mapping[str, Any] = msgspec.field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return self.subject is not None

    def claim(self, name: str) -> Any:
        return self.claims.get(name)


ANONYMOUS = Caller()


class Rule:
    """A predicate over a caller; combine with `|` (either) and `&` (both)."""

    def allows(self, caller: Caller) -> bool:
        raise NotImplementedError

    def __or__(self, other: RuleLike) -> Rule:
        return _Any((self, rule(other)))

    def __and__(self, other: RuleLike) -> Rule:
        return _All((self, rule(other)))


RuleLike: TypeAlias = "Rule | Callable[[Caller], bool]"


@dataclass(frozen=True)
class Anyone(Rule):
    """Public: any sender, with or without a token."""

    def allows(self, caller: Caller) -> bool:
        return True


@dataclass(frozen=True)
class Authenticated(Rule):
    """Any caller with a verified token."""

    def allows(self, caller: Caller) -> bool:
        return caller.authenticated


@dataclass(frozen=True)
class Nobody(Rule):
    """No sender from outside (commands from inside the process still run)."""

    def allows(self, caller: Caller) -> bool:
        return False


@dataclass(frozen=True, init=False)
class Claim(Rule):
    """The verified claim `name` holds one of `values`.

    A list claim (`roles: ["a", "b"]`) matches if any element does; `scope` and `scp` as a
    space-separated string (RFC 8693 §4.2) are read as a list of scopes.
    """

    name: str
    values: frozenset[Any]

    def __init__(self, name: str, *values: Any) -> None:
        if not values:
            raise ConfigError(f"Claim({name!r}) needs at least one value to match")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "values", frozenset(values))

    def allows(self, caller: Caller) -> bool:
        if not caller.authenticated:
            return False
        got = caller.claims.get(self.name)
        if isinstance(got, str) and self.name in ("scope", "scp"):
            got = got.split()
        if isinstance(got, list):
            return any(_hashable(v) and v in self.values for v in got)
        return _hashable(got) and got in self.values


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


@dataclass(frozen=True)
class _Predicate(Rule):
    fn: Callable[[Caller], bool]

    def allows(self, caller: Caller) -> bool:
        return caller.authenticated and bool(self.fn(caller))  # user code never sees an anonymous caller


@dataclass(frozen=True)
class _Any(Rule):
    rules: tuple[Rule, ...]

    def allows(self, caller: Caller) -> bool:
        return any(r.allows(caller) for r in self.rules)


@dataclass(frozen=True)
class _All(Rule):
    rules: tuple[Rule, ...]

    def allows(self, caller: Caller) -> bool:
        return all(r.allows(caller) for r in self.rules)


def rule(value: RuleLike) -> Rule:
    """A Rule, or a callable `(Caller) -> bool` (called for verified callers only) as one."""
    if isinstance(value, Rule):
        return value
    if callable(value):
        return _Predicate(value)
    raise ConfigError(f"an access rule is a Rule (Claim, Authenticated, Anyone, …) or a callable, got {value!r}")


@dataclass(frozen=True)
class Policy:
    """The app's access rules; a command no rule names gets `default`, which denies.

    `entities` maps an entity type to its rule, `commands` maps `"type.command"` to one.
    """

    default: RuleLike = field(default_factory=Nobody)
    entities: Mapping[str, RuleLike] = field(default_factory=dict)
    commands: Mapping[str, RuleLike] = field(default_factory=dict)

    def check(self, known: Mapping[str, set[str]]) -> None:
        """Refuse rules naming an entity type or command the app does not have (a typo would open nothing)."""
        rule(self.default)
        for name, r in self.entities.items():
            if name not in known:
                raise ConfigError(f"policy: no entity type {name!r} (known: {', '.join(sorted(known))})")
            rule(r)
        for key, r in self.commands.items():
            type_name, _, command = key.partition(".")
            if command not in known.get(type_name, ()):
                raise ConfigError(f"policy: no command {key!r}; name commands as 'type.command'")
            rule(r)


def rule_for(policy: Policy | None, type_name: str, command: str, allow: RuleLike | None) -> Rule | None:
    """The rule guarding one command, or None when it is open (no policy, no `allow`)."""
    if policy is not None and (r := policy.commands.get(f"{type_name}.{command}")) is not None:
        return rule(r)
    if allow is not None:
        return rule(allow)
    if policy is None:
        return None
    r = policy.entities.get(type_name)
    return rule(policy.default if r is None else r)


def authorize(guard: Rule | None, caller: Caller, entity_type: str, command: str) -> None:
    """Raise `unauthorized` (no verified caller) or `forbidden` (not allowed) unless `guard` lets `caller` in."""
    if guard is None or guard.allows(caller):
        return
    if not caller.authenticated:
        raise Unauthorized(
            ErrorCode.UNAUTHORIZED,
            f"{entity_type}.{command} needs a verified caller: send a bearer token in the Authorization header",
        )
    raise Forbidden(ErrorCode.FORBIDDEN, f"{caller.subject!r} may not send {entity_type}.{command}")
