"""An app: the entity types (and later views and consumers) one runtime process hosts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .access import Policy
from .entity import EventSourcedEntity, model_of
from .errors import ConfigError


@dataclass(frozen=True)
class App:
    name: str
    entities: Sequence[type[EventSourcedEntity[Any]]] = ()
    views: Sequence[Any] = field(default_factory=tuple)
    consumers: Sequence[Any] = field(default_factory=tuple)
    # Access rules for commands from outside; with one set, what no rule names is denied.
    policy: Policy | None = None

    def __post_init__(self) -> None:
        names = [model_of(e).type_name for e in self.entities]  # compiling validates each class
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"app {self.name!r}: entity type names used twice: {dupes}")
        if self.policy is not None:
            self.policy.check({model_of(e).type_name: set(model_of(e).commands) for e in self.entities})

    def entity(self, type_name: str) -> type[EventSourcedEntity[Any]]:
        for e in self.entities:
            if e.type_name == type_name:
                return e
        raise ConfigError(f"app {self.name!r} has no entity type {type_name!r}")
