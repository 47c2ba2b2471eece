"""Queries and indexes of views in SQL: the same expressions in the indexes and in the queries, so
the planners match them.

SQLite: an expression index over `json_extract(CAST(row AS TEXT), '$."field"')`, partial on the
view's name (`WHERE view = 'accounts'`), one per declared index, with the key as its last column.
PostgreSQL: the same over `{schema}.view_doc(row)` (the row's bytes as jsonb; an immutable
function so an index may use it), typed per field (text in the C collation, numeric, boolean)
and `NULLS FIRST` as SQLite sorts them. The view's name is written into each statement as a
literal, so the partial indexes apply (view names are plain words: `check_name`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .query import (
    KEY,
    And,
    Eq,
    Ge,
    Gt,
    In,
    Index,
    IsNull,
    Kind,
    Le,
    Lt,
    NotNull,
    Or,
    Plan,
    Prefix,
    Scalar,
    Where,
    _Cmp,
    prefix_end,
)

_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_name(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


@dataclass
class Dialect:
    """How one SQL store writes a field's expression and a parameter."""

    expr: Callable[[str, Kind], str]
    placeholder: Callable[[int, Kind], str]
    convert: Callable[[Scalar, Kind], Any]
    nulls: bool  # write NULLS FIRST / LAST (PostgreSQL's default differs from SQLite's)
    params: list[Any] = field(default_factory=list)

    def param(self, value: Scalar, kind: Kind) -> str:
        self.params.append(self.convert(value, kind))
        return self.placeholder(len(self.params), kind)


def sqlite_dialect() -> Dialect:
    return Dialect(
        expr=lambda name, _: f"json_extract(CAST(row AS TEXT), '$.{_json_name(name)}')",
        placeholder=lambda _n, _k: "?",
        convert=lambda v, _k: v,
        nulls=False,
    )


def postgres_dialect(schema: str) -> Dialect:
    casts = {"text": "", "number": "::numeric", "bool": "::boolean"}

    def expr(name: str, kind: Kind) -> str:
        got = f"({schema}.view_doc(row) ->> {_literal(name)})"
        return f'({got} COLLATE "C")' if kind == "text" else f"({got}{casts[kind]})"

    def convert(v: Scalar, kind: Kind) -> Any:
        return Decimal(str(v)) if kind == "number" and v is not None else v

    return Dialect(
        expr=expr,
        placeholder=lambda n, k: f"${n}{casts[k] or '::text'}",
        convert=convert,
        nulls=True,
    )


def _column(d: Dialect, name: str, kinds: Mapping[str, Kind]) -> tuple[str, Kind]:
    if name == KEY:
        return "key", "text"
    kind = kinds[name]
    return d.expr(name, kind), kind


def where_sql(d: Dialect, where: Where, kinds: Mapping[str, Kind]) -> str:
    """`where` as SQL text, its values appended to `d.params`."""
    if isinstance(where, And | Or):
        if not where.terms:
            return "TRUE" if isinstance(where, And) else "FALSE"
        joiner = " AND " if isinstance(where, And) else " OR "
        return "(" + joiner.join(where_sql(d, t, kinds) for t in where.terms) + ")"
    col, kind = _column(d, where.field, kinds)
    if isinstance(where, IsNull):
        return f"{col} IS NULL"
    if isinstance(where, NotNull):
        return f"{col} IS NOT NULL"
    if isinstance(where, In):
        if not where.values:
            return "FALSE"
        return f"{col} IN (" + ", ".join(d.param(v, kind) for v in where.values) + ")"
    if isinstance(where, Prefix):
        low = f"{col} >= {d.param(where.value, kind)}"
        end = prefix_end(where.value)
        return low if end is None else f"({low} AND {col} < {d.param(end, kind)})"
    assert isinstance(where, _Cmp)
    op = type(where).__struct_config__.tag
    return f"{col} {_SQL_OPS[str(op)]} {d.param(where.value, kind)}"


def _conjuncts(where: Where | None) -> list[Where]:
    if where is None:
        return []
    if isinstance(where, And):
        return [c for t in where.terms for c in _conjuncts(t)]
    return [where]


def choose_index(plan: Plan, indexes: Sequence[Index]) -> Index | None:
    """The index that serves `plan` best: the most leading fields held equal (=, in), then one in a
    range (<, >, prefix), then the order given; None when no index helps (SQLite is told which one,
    as it has no statistics before an ANALYZE and would rather search the primary key's prefix)."""
    terms = _conjuncts(plan.where)
    equal = {t.field for t in terms if isinstance(t, In | Eq)}
    ranged = {t.field for t in terms if isinstance(t, Prefix | Lt | Le | Gt | Ge)}
    order = [o.field for o in plan.order if o.field != KEY]
    best: tuple[float, Index] | None = None
    for index in indexes:
        names = [f.name for f in index.fields]
        score = 0.0
        i = 0
        while i < len(names) and names[i] in equal:
            score, i = score + 2, i + 1
        rest = [n for n in order if n not in equal or n in names[i:]]
        if i < len(names) and names[i] in ranged:
            score += 1
        if rest and names[i : i + len(rest)] == rest:
            score += 0.5
        if score > 0 and (best is None or score > best[0]):
            best = (score, index)
    return None if best is None else best[1]


def select_sql(d: Dialect, table: str, view: str, plan: Plan, hint: str = "") -> str:
    """The statement of one page: rows of `view` passing the plan's filter, in its order, limited
    (`hint`: SQLite's `INDEXED BY name`)."""
    cond = f"view = {_literal(view)}"
    if plan.where is not None:
        cond += " AND " + where_sql(d, plan.where, plan.kinds)
    order = []
    for o in plan.order:
        col, _ = _column(d, o.field, plan.kinds)
        nulls = (" NULLS LAST" if o.desc else " NULLS FIRST") if d.nulls and o.field != KEY else ""
        order.append(f"{col} {'DESC' if o.desc else 'ASC'}{nulls}")
    return f"SELECT key, row FROM {table}{hint} WHERE {cond} ORDER BY {', '.join(order)} LIMIT {int(plan.limit)}"


def count_sql(d: Dialect, table: str, view: str, where: Where | None, kinds: Mapping[str, Kind]) -> str:
    cond = f"view = {_literal(view)}"
    if where is not None:
        cond += " AND " + where_sql(d, where, kinds)
    return f"SELECT count(*) FROM {table} WHERE {cond}"


def index_name(view: str, index: Index) -> str:
    return f"vq_{index.digest(view)}"


def create_index_sql(d: Dialect, table: str, view: str, index: Index) -> str:
    nulls = " NULLS FIRST" if d.nulls else ""
    cols = [f"{d.expr(f.name, f.kind)}{nulls}" for f in index.fields]
    return (
        f"CREATE INDEX IF NOT EXISTS {index_name(view, index)} ON {table}"
        f" ({', '.join(cols)}, key) WHERE view = {_literal(view)}"
    )


def desired(view: str, indexes: Sequence[Index]) -> dict[str, Index]:
    return {index_name(view, i): i for i in indexes}


__all__ = ["count_sql", "create_index_sql", "postgres_dialect", "select_sql", "sqlite_dialect", "where_sql"]
