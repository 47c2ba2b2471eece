"""The query model of views: one msgspec tree that Python, NATS, HTTP and the CLI all speak.

A view declares what it is queried by (`indexes=["owner", ("region", "name")]`); a query may
filter and sort by those fields only, so no query is a silent full scan of a field nobody
indexed. Its JSON form (the body of `{prefix}.view.{name}.query`):

    {"where": {"op": "and", "terms": [
        {"op": "=", "field": "owner", "value": "ann"},
        {"op": "in", "field": "region", "values": ["eu", "us"]}]},
     "order_by": ["-balance"], "limit": 10, "page": null}

Operators: `=` `!=` `<` `<=` `>` `>=` (`value`), `in` (`values`), `prefix` (`value`, a string),
`is_null` / `not_null`, `and` / `or` (`terms`). A comparison with a null field is false, as in
SQL. `order_by` names declared fields, `-` in front for descending; the row's key always breaks
ties, so the order is total and page tokens are keyset (seek) positions: a row that did not change
is neither missed nor repeated across pages, whatever is written meanwhile. Nulls sort first going
up and last going down, in every store.
"""

from __future__ import annotations

import base64
import hashlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, Union

import msgspec

from ..model.errors import ConfigError, ErrorCode, Invalid

R = TypeVar("R")
Scalar = str | int | float | bool | None
Kind = Literal["text", "number", "bool"]
KEY = "@key"  # the row's key in seek conditions (never a user field: fields are identifiers)
MAX_LIMIT = 10_000


class QueryError(Invalid):
    """A query that cannot run: names what is wrong (every door answers it as `invalid`)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID, message)


# -- the tree -------------------------------------------------------------------------------------


class _Cmp(msgspec.Struct, forbid_unknown_fields=True, tag_field="op"):
    field: str
    value: Scalar


class Eq(_Cmp, tag="="):
    pass


class Ne(_Cmp, tag="!="):
    pass


class Lt(_Cmp, tag="<"):
    pass


class Le(_Cmp, tag="<="):
    pass


class Gt(_Cmp, tag=">"):
    pass


class Ge(_Cmp, tag=">="):
    pass


class In(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="in"):
    field: str
    values: list[Scalar]


class Prefix(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="prefix"):
    field: str
    value: str


class IsNull(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="is_null"):
    field: str


class NotNull(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="not_null"):
    field: str


class And(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="and"):
    terms: list[Where]


class Or(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", tag="or"):
    terms: list[Where]


Where = Union[Eq, Ne, Lt, Le, Gt, Ge, In, Prefix, IsNull, NotNull, And, Or]  # noqa: UP007 - msgspec needs the alias
Comparison = Eq | Ne | Lt | Le | Gt | Ge
COMPARISONS: dict[str, type[Comparison]] = {"=": Eq, "!=": Ne, "<": Lt, "<=": Le, ">": Gt, ">=": Ge}


class Query(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One query: filter, order, how many, and where to resume (a token from the previous page)."""

    where: Where | None = None
    order_by: list[str] = msgspec.field(default_factory=list)
    limit: int = 100
    page: str | None = None


class CountQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    where: Where | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    """One page of a query's result: `(key, row)` pairs, and the token of the next page (None: the last)."""

    rows: list[tuple[str, R]]
    next: str | None


# -- declarations ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # the name in the row's JSON
    kind: Kind


@dataclass(frozen=True, slots=True)
class Index:
    """One declared index: its fields in order (the key is always the last column)."""

    fields: tuple[Field, ...]

    def digest(self, view: str) -> str:
        text = f"{view}|" + ",".join(f"{f.name}:{f.kind}" for f in self.fields)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


IndexDecl = str | tuple[str, ...]


def _kind(tp: Any) -> tuple[Kind | None, bool]:
    """The query kind of a row field's type, and whether it may be null."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        kind, _ = _kind(args[0]) if len(args) == 1 else (None, False)
        return kind, True
    if tp is bool:
        return "bool", False
    if tp in (int, float):
        return "number", False
    if tp is str:
        return "text", False
    return None, False


def declared_fields(view: str, row_type: type, indexes: Sequence[IndexDecl]) -> tuple[dict[str, Field], list[Index]]:
    """Check a view's `indexes=` against its row type: the queryable fields and the indexes.

    Raises ConfigError naming the view and the field that is not a scalar field of the row."""
    try:
        struct_fields = {f.name: f for f in msgspec.structs.fields(row_type)}
    except TypeError:
        raise ConfigError(f"view {view}: indexes need a msgspec.Struct row type, not {row_type!r}") from None
    hints = typing.get_type_hints(row_type)
    fields: dict[str, Field] = {}
    out: list[Index] = []
    for decl in indexes:
        names = (decl,) if isinstance(decl, str) else tuple(decl)
        if not names:
            raise ConfigError(f"view {view}: an empty index in indexes=")
        for name in names:
            if name not in struct_fields:
                raise ConfigError(
                    f"view {view}: index field {name!r} is not a field of {row_type.__name__}"
                    f" (fields: {sorted(struct_fields)})"
                )
            kind, _ = _kind(hints[name])
            if kind is None:
                raise ConfigError(
                    f"view {view}: index field {name!r} must be str, int, float or bool (or optional),"
                    f" not {hints[name]}"
                )
            fields[name] = Field(struct_fields[name].encode_name, kind)
        out.append(Index(tuple(fields[n] for n in names)))
    return fields, out


# -- checking a query ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    field: str  # JSON name, or KEY
    desc: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked query, in the row's JSON names, ready for a store: filter (with the seek), order, limit."""

    where: Where | None
    order: tuple[Order, ...]  # ends with the key
    limit: int
    kinds: Mapping[str, Kind]  # JSON name -> kind, for the stores' typed expressions


class _Token(msgspec.Struct, array_like=True):
    fingerprint: str
    values: list[Scalar]
    key: str


def _value_ok(kind: Kind, value: Scalar) -> bool:
    if value is None:
        return False
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _rename(where: Where, view: str, fields: Mapping[str, Field]) -> Where:
    """Check names, operators and value types; return the tree in JSON names."""

    def field(name: str) -> Field:
        if name not in fields:
            raise QueryError(
                f"view {view}: field {name!r} is not declared for queries (declared: {sorted(fields)});"
                " add it to the view's indexes="
            )
        return fields[name]

    def value(f: Field, name: str, v: Scalar) -> Scalar:
        if not _value_ok(f.kind, v):
            raise QueryError(f"view {view}: field {name!r} holds {f.kind} values, not {v!r}")
        return v

    if isinstance(where, And | Or):
        if not where.terms:
            raise QueryError(f"view {view}: {type(where).__name__.lower()} needs at least one term")
        return type(where)([_rename(t, view, fields) for t in where.terms])
    f = field(where.field)
    if isinstance(where, _Cmp):
        return type(where)(f.name, value(f, where.field, where.value))
    if isinstance(where, In):
        return In(f.name, [value(f, where.field, v) for v in where.values])
    if isinstance(where, Prefix):
        if f.kind != "text":
            raise QueryError(f"view {view}: prefix needs a text field; {where.field!r} holds {f.kind} values")
        return Prefix(f.name, where.value)
    return type(where)(f.name)


def _fingerprint(query: Query) -> str:
    shape = msgspec.json.encode([query.where, query.order_by])
    return hashlib.sha256(shape).hexdigest()[:12]


def plan(view: str, fields: Mapping[str, Field], query: Query) -> Plan:
    """Check `query` against the view's declared fields and turn it into a store's plan."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise QueryError(f"view {view}: limit must be between 1 and {MAX_LIMIT}, not {query.limit}")
    where = None if query.where is None else _rename(query.where, view, fields)
    fields_by_json = {f.name: f for f in fields.values()}
    order: list[Order] = []
    for spec in query.order_by:
        desc = spec.startswith("-")
        name = spec[1:] if desc else spec
        if name not in fields:
            raise QueryError(
                f"view {view}: cannot order by {name!r}: not declared for queries (declared: {sorted(fields)})"
            )
        order.append(Order(fields[name].name, desc))
    order.append(Order(KEY, order[-1].desc if order else False))
    if query.page is not None:
        token = decode_token(view, query.page)
        if token.fingerprint != _fingerprint(query) or len(token.values) != len(order) - 1:
            raise QueryError(f"view {view}: the page token belongs to another query (same where and order_by)")
        kinds_in_order = [fields_by_json[o.field].kind for o in order[:-1]]
        if any(v is not None and not _value_ok(k, v) for k, v in zip(kinds_in_order, token.values, strict=True)):
            raise QueryError(f"view {view}: page token {query.page[:40]!r} is not one this view gave")
        seek = _seek(order, [*token.values, token.key])
        where = seek if where is None else And([where, seek])
    kinds = {f.name: f.kind for f in fields.values()}
    return Plan(where, tuple(order), query.limit, kinds)


def _seek(order: Sequence[Order], last: Sequence[Scalar]) -> Where:
    """The rows strictly after `last` in `order` (nulls first going up, last going down)."""
    terms: list[Where] = []
    for i, (o, v) in enumerate(zip(order, last, strict=True)):
        before = zip(order[:i], last[:i], strict=True)
        equal: list[Where] = [IsNull(p.field) if pv is None else Eq(p.field, pv) for p, pv in before]
        beyond: Where | None
        if v is None:
            beyond = None if o.desc else NotNull(o.field)
        elif o.desc:
            beyond = Or([Lt(o.field, v), IsNull(o.field)])
        else:
            beyond = Gt(o.field, v)
        if beyond is not None:
            terms.append(And([*equal, beyond]) if equal else beyond)
    first, v0 = order[0], last[0]
    seek: Where = Or(terms) if terms else In(KEY, [])
    if v0 is not None and not first.desc:
        return And([Ge(first.field, v0), seek])  # a range bound the planners use on the index
    return seek


def encode_token(query: Query, order: Sequence[Order], last_key: str, last_row: Mapping[str, Any]) -> str:
    values = [last_row.get(o.field) for o in order if o.field != KEY]
    raw = msgspec.msgpack.encode(_Token(_fingerprint(query), values, last_key))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(view: str, token: str) -> _Token:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return msgspec.msgpack.decode(raw, type=_Token)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise QueryError(f"view {view}: page token {token[:40]!r} is not one this view gave") from None


# -- evaluating in Python (the memory store, live queries) -------------------------------------------


def _get(doc: Mapping[str, Any], key: str, name: str) -> Any:
    return key if name == KEY else doc.get(name)


_OPS: dict[type, Callable[[Any, Any], bool]] = {
    Eq: lambda a, b: a == b,
    Ne: lambda a, b: a != b,
    Lt: lambda a, b: a < b,
    Le: lambda a, b: a <= b,
    Gt: lambda a, b: a > b,
    Ge: lambda a, b: a >= b,
}


def matches(where: Where | None, key: str, doc: Mapping[str, Any]) -> bool:
    """Whether a row (its key and its JSON object) passes `where`, with SQL's null rules."""
    if where is None:
        return True
    if isinstance(where, And):
        return all(matches(t, key, doc) for t in where.terms)
    if isinstance(where, Or):
        return any(matches(t, key, doc) for t in where.terms)
    v = _get(doc, key, where.field)
    if isinstance(where, IsNull):
        return v is None
    if isinstance(where, NotNull):
        return v is not None
    if v is None:
        return False
    if isinstance(where, In):
        return any(v == x for x in where.values)
    if isinstance(where, Prefix):
        return isinstance(v, str) and v.startswith(where.value)
    return _OPS[type(where)](v, where.value)


def sort_key(order: Sequence[Order]) -> Callable[[tuple[str, Mapping[str, Any]]], tuple[Any, ...]]:
    """A key function for `(key, doc)` pairs in `order` (nulls first up, last down; desc by negation
    where it can, else by a reversed wrapper)."""

    def one(o: Order, v: Any) -> Any:
        present = v is not None
        item = (present, v if present else 0)
        return _Desc(item) if o.desc else item

    return lambda kd: tuple(one(o, _get(kd[1], kd[0], o.field)) for o in order)


class _Desc:
    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.v < self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.v == other.v

    def __hash__(self) -> int:
        return hash(self.v)


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (None: no bound), in code point
    order, which is also UTF-8 byte order."""
    p = prefix.rstrip("\U0010ffff")
    return None if not p else p[:-1] + chr(ord(p[-1]) + 1)


def walk(where: Where | None) -> Iterable[Where]:
    if where is None:
        return
    yield where
    if isinstance(where, And | Or):
        for t in where.terms:
            yield from walk(t)


__all__ = [
    "And",
    "CountQuery",
    "Eq",
    "Ge",
    "Gt",
    "In",
    "Index",
    "IsNull",
    "Le",
    "Lt",
    "Ne",
    "NotNull",
    "Or",
    "Page",
    "Plan",
    "Prefix",
    "Query",
    "QueryError",
    "Where",
]
