"""Event naming, versioning and upcasting.

An event is any `msgspec.Struct`. Its stored name is its class name unless set
with `@event(name=...)`, so a class can be renamed in code while the journal
keeps the old name. A version and upcasters let old journals load: an upcaster
turns the JSON object of version N into the one of version N + 1, and they are
chained up to the current version before the payload is decoded.

```python
@event(version=2, upcasters={1: lambda old: {**old, "reason": "unknown"}})
class Adjusted(msgspec.Struct):
    units: int
    on: date
    reason: str
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from .envelope import Envelope
from .errors import ConfigError, EventDecodeError

E = TypeVar("E", bound=type[msgspec.Struct])

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_SPEC_ATTR = "__memoir_event__"


@dataclass(frozen=True, slots=True)
class EventSpec:
    name: str
    version: int = 1
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)


def event(
    cls: E | None = None,
    *,
    name: str | None = None,
    version: int = 1,
    upcasters: Mapping[int, Upcaster] | None = None,
) -> Any:
    """Declare an event class's stored name, its version and upcasters from older versions."""

    def mark(c: E) -> E:
        if not (isinstance(c, type) and issubclass(c, msgspec.Struct)):
            raise ConfigError(f"@event expects a msgspec.Struct class, got {c!r}")
        ups = dict(upcasters or {})
        if version < 1:
            raise ConfigError(f"{c.__name__}: version must be >= 1, got {version}")
        bad = [v for v in ups if not 1 <= v < version]
        if bad:
            raise ConfigError(f"{c.__name__}: upcasters for versions {bad} are outside 1..{version - 1}")
        # A version step without an upcaster is allowed: adding a field with a default
        # needs none, the old payload still decodes.
        setattr(c, _SPEC_ATTR, EventSpec(name or c.__name__, version, ups))
        return c

    return mark if cls is None else mark(cls)


def spec_of(cls: type) -> EventSpec:
    spec = cls.__dict__.get(_SPEC_ATTR)
    return spec if spec is not None else EventSpec(cls.__name__)


class EventCodec:
    """Encodes an entity type's events and decodes stored envelopes back into them."""

    def __init__(self, classes: Iterable[type[msgspec.Struct]]) -> None:
        self._by_name: dict[str, tuple[type[msgspec.Struct], EventSpec, msgspec.json.Decoder[msgspec.Struct]]] = {}
        self._by_class: dict[type, EventSpec] = {}
        for cls in classes:
            spec = spec_of(cls)
            other = self._by_name.get(spec.name)
            if other is not None and other[0] is not cls:
                raise ConfigError(f"two event classes share the stored name {spec.name!r}: {other[0]!r} and {cls!r}")
            self._by_name[spec.name] = (cls, spec, msgspec.json.Decoder(cls))
            self._by_class[cls] = spec
        self._encoder = msgspec.json.Encoder()

    def decoders(self) -> dict[str, tuple[type[msgspec.Struct], int, Callable[[bytes], msgspec.Struct]]]:
        """Stored name -> (class, current version, payload decoder): replay's fast path."""
        return {name: (cls, spec.version, dec.decode) for name, (cls, spec, dec) in self._by_name.items()}

    def knows(self, name: str) -> bool:
        """Whether events stored under `name` decode with this codec."""
        return name in self._by_name

    @property
    def classes(self) -> list[type[msgspec.Struct]]:
        return [c for c, _, _ in self._by_name.values()]

    def spec(self, event: msgspec.Struct) -> EventSpec:
        try:
            return self._by_class[type(event)]
        except KeyError:
            raise ConfigError(
                f"{type(event).__name__} is not an event of this entity: add an @applies handler for it"
            ) from None

    def encode(self, event: msgspec.Struct) -> bytes:
        return self._encoder.encode(event)

    def decode(self, env: Envelope) -> msgspec.Struct:
        entry = self._by_name.get(env.name)
        if entry is None:
            raise EventDecodeError(env.entity_type, env.entity_id, env.seq, f"unknown event name {env.name!r}")
        cls, spec, decoder = entry
        try:
            if env.version == spec.version:
                return decoder.decode(env.payload)
            if env.version > spec.version:
                raise EventDecodeError(
                    env.entity_type,
                    env.entity_id,
                    env.seq,
                    f"{env.name} v{env.version} is newer than this code's v{spec.version}",
                )
            data = msgspec.json.decode(env.payload)
            if not isinstance(data, dict):
                raise msgspec.ValidationError(f"expected a JSON object, got {type(data).__name__}")
            for v in range(env.version, spec.version):
                up = spec.upcasters.get(v)
                if up is not None:
                    data = up(data)
            return msgspec.convert(data, cls, strict=False)
        except EventDecodeError:
            raise
        except Exception as exc:  # any failure here is a bad stored row: name it
            reason = f"{env.name} v{env.version}: {exc}"
            raise EventDecodeError(env.entity_type, env.entity_id, env.seq, reason) from exc
