"""A where-expression as people type it (`memoir query accounts --where 'owner = "ann" and balance > 10'`).

    expr   := term ("or" term)*
    term   := atom ("and" atom)*
    atom   := "(" expr ")" | FIELD OP VALUE | FIELD "in" "(" VALUE ("," VALUE)* ")"
            | FIELD "prefix" STRING | FIELD "is" ["not"] "null"
    OP     := = | != | < | <= | > | >=
    VALUE  := a JSON string, number, true or false

Words are case-insensitive; it parses into the same tree (`query.Where`) as the JSON form.
"""

from __future__ import annotations

import json
import re

from .query import COMPARISONS, And, In, IsNull, NotNull, Or, Prefix, Query, QueryError, Scalar, Where

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<op><=|>=|!=|=|<|>)"""
    r"""|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"""
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise QueryError(f"where: cannot read {text[pos:].strip()[:30]!r} (at character {pos + 1})")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise QueryError("where: the expression ends too soon")
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].lower() in words:
            self.i += 1
            return True
        return False

    def punct(self, p: str) -> None:
        tok = self.take()
        if tok != ("punct", p):
            raise QueryError(f"where: expected {p!r}, found {tok[1]!r}")

    def expr(self) -> Where:
        terms = [self.term()]
        while self.word("or"):
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else Or(terms)

    def term(self) -> Where:
        atoms = [self.atom()]
        while self.word("and"):
            atoms.append(self.atom())
        return atoms[0] if len(atoms) == 1 else And(atoms)

    def value(self) -> Scalar:
        kind, text = self.take()
        if kind in ("str", "num"):
            v: Scalar = json.loads(text)
            return v
        if kind == "word" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise QueryError(f"where: expected a value (a JSON string, a number, true or false), found {text!r}")

    def atom(self) -> Where:
        kind, text = self.take()
        if (kind, text) == ("punct", "("):
            inner = self.expr()
            self.punct(")")
            return inner
        if kind != "word":
            raise QueryError(f"where: expected a field name, found {text!r}")
        field = text
        if self.word("is"):
            negated = self.word("not")
            if not self.word("null"):
                raise QueryError(f"where: {field} is … must be followed by null")
            return NotNull(field) if negated else IsNull(field)
        if self.word("in"):
            self.punct("(")
            values = [self.value()]
            while self.peek() == ("punct", ","):
                self.i += 1
                values.append(self.value())
            self.punct(")")
            return In(field, values)
        if self.word("prefix"):
            v = self.value()
            if not isinstance(v, str):
                raise QueryError(f"where: {field} prefix needs a string")
            return Prefix(field, v)
        op_kind, op = self.take()
        if op_kind != "op":
            raise QueryError(f"where: after {field!r} expected = != < <= > >= in prefix or is, found {op!r}")
        return COMPARISONS[op](field, self.value())


def parse_where(text: str) -> Where:
    """The tree of a where-expression; QueryError names what cannot be read."""
    p = _Parser(text)
    where = p.expr()
    rest = p.peek()
    if rest is not None:
        raise QueryError(f"where: unexpected {rest[1]!r} (join conditions with and / or)")
    return where


def parse_order(text: str) -> list[str]:
    """`posts desc, author` (or `-posts,author`) as a query's order_by: ["-posts", "author"]."""
    out: list[str] = []
    for spec in (part.strip() for part in text.split(",")):
        match spec.split():
            case [name, direction] if direction.lower() in ("asc", "desc"):
                out.append(f"-{name}" if direction.lower() == "desc" else name)
            case [name]:
                out.append(name)
            case []:
                continue
            case _:
                raise QueryError(f"order by {spec!r}: a field, then asc or desc if you like")
    return out


def query_from_text(where: str | None, order_by: str | None, limit: int, page: str | None) -> Query:
    """A query from text parameters (a URL's query string, the CLI's flags)."""
    return Query(
        where=None if where is None else parse_where(where),
        order_by=[] if order_by is None else parse_order(order_by),
        limit=limit,
        page=page,
    )


__all__ = ["parse_order", "parse_where", "query_from_text"]
