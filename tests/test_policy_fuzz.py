"""A grammar-driven fuzzer for the SQL policy check, judged by oracles that
never consult the checker.

Queries come from a small AST of our own (rendered with varied case and
quoting of names) over two owners' datasets: shapes the rules allow
(grouped aggregates, dimension filters, joins on the identity, HAVING,
ORDER BY/LIMIT, aggregating CTEs and derived tables with outer filters,
renames and re-aggregation) and shapes the threat model names as leaks
(differencing two aggregates, literal tables joined to the identity,
filters on identities or measures, raw rows, windows, set operations,
subqueries, PIVOT/SUMMARIZE, ``MAX(x, n)``, samples, lateral joins,
table and environment functions, unknown functions, aggregate FILTERs,
conversions whose errors quote values).

For every query: the checker either refuses it with ``PolicyError`` or
returns SQL; anything else is a crash. Accepted SQL runs on a random room and
must pass the oracles of :mod:`tests.policy_oracles` (suppression, influence
and differencing, shape, error messages). A refused query is never a failure
here: the table tests and the regression vectors pin what must be refused.

``CLEANROOM_FUZZ_EXAMPLES`` sets the number of examples (default sized for CI).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, given, settings
from hypothesis import event as _event
from hypothesis import note as _note
from hypothesis import strategies as st

from cleanroom.errors import PolicyError
from cleanroom.policy.check import check_query
from tests.policy_oracles import (
    Engine,
    Groups,
    OracleQueryError,
    Room,
    UnstableOutputError,
    Violation,
    error_message,
    examine,
    expected_k,
    influence,
    random_room,
    reference_room,
    shape,
    suppression,
)
from tests.test_policy import BANK_RULE, MERCHANT_RULE, SOURCES

EXAMPLES = int(os.environ.get("CLEANROOM_FUZZ_EXAMPLES", "2000"))
VECTORS = Path(__file__).parent / "vectors" / "policy_fuzz"
T, C, ID = "transactions", "customers", "customer_hash"

# -- rendering -------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How names and keywords are spelled. DuckDB resolves names without regard
    to case, quoted or not; a checker must agree with it."""

    names: str = "plain"  # plain | upper | title | quoted | quoted_upper | quoted_title
    keywords: str = "upper"

    def ident(self, name: str) -> str:
        match self.names:
            case "upper":
                return name.upper()
            case "title":
                return name.title()
            case "quoted":
                return f'"{name}"'
            case "quoted_upper":
                return f'"{name.upper()}"'
            case "quoted_title":
                return f'"{name.title()}"'
        return name

    def kw(self, text: str) -> str:
        return text.lower() if self.keywords == "lower" else text.upper()


PLAIN = Style()


class Expr:
    def sql(self, s: Style) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Raw(Expr):
    text: str

    def sql(self, s: Style) -> str:
        return self.text


@dataclass(frozen=True)
class Col(Expr):
    name: str
    qual: str | None = None

    def sql(self, s: Style) -> str:
        prefix = f"{s.ident(self.qual)}." if self.qual else ""
        return prefix + s.ident(self.name)


@dataclass(frozen=True)
class Lit(Expr):
    value: object

    def sql(self, s: Style) -> str:
        v = self.value
        if v is None:
            return s.kw("NULL")
        if isinstance(v, bool):
            return s.kw(str(v).upper())
        if isinstance(v, str):
            return "'" + v.replace("'", "''") + "'"
        if isinstance(v, datetime):
            return f"{s.kw('TIMESTAMP')} '{v:%Y-%m-%d %H:%M:%S}'"
        return str(v)


@dataclass(frozen=True)
class Fn(Expr):
    name: str
    args: tuple[Expr, ...] = ()

    def sql(self, s: Style) -> str:
        return f"{s.kw(self.name)}({', '.join(a.sql(s) for a in self.args)})"


@dataclass(frozen=True)
class Agg(Expr):
    name: str
    arg: Expr | None = None  # None: *
    distinct: bool = False
    where: Expr | None = None  # FILTER (WHERE ...)
    extra: tuple[Expr, ...] = ()

    def sql(self, s: Style) -> str:
        inner = "*" if self.arg is None else self.arg.sql(s)
        if self.distinct:
            inner = f"{s.kw('DISTINCT')} {inner}"
        args = ", ".join([inner, *(e.sql(s) for e in self.extra)])
        text = f"{s.kw(self.name)}({args})"
        if self.where is not None:
            text += f" {s.kw('FILTER')} ({s.kw('WHERE')} {self.where.sql(s)})"
        return text


@dataclass(frozen=True)
class Op(Expr):
    op: str
    left: Expr
    right: Expr

    def sql(self, s: Style) -> str:
        text = f"{self.left.sql(s)} {s.kw(self.op)} {self.right.sql(s)}"
        # comparisons bind tighter than AND/OR and take no AND/OR operands here
        return text if self.op in COMPARISONS else f"({text})"


COMPARISONS = frozenset({"=", "<>", "<", ">", "<=", ">=", "LIKE"})


@dataclass(frozen=True)
class Not(Expr):
    this: Expr

    def sql(self, s: Style) -> str:
        return f"{s.kw('NOT')} ({self.this.sql(s)})"


@dataclass(frozen=True)
class In(Expr):
    this: Expr
    values: tuple[Expr, ...]
    negated: bool = False

    def sql(self, s: Style) -> str:
        word = s.kw("NOT IN" if self.negated else "IN")
        return f"{self.this.sql(s)} {word} ({', '.join(v.sql(s) for v in self.values)})"


@dataclass(frozen=True)
class Between(Expr):
    this: Expr
    low: Expr
    high: Expr

    def sql(self, s: Style) -> str:
        return (
            f"{self.this.sql(s)} {s.kw('BETWEEN')} {self.low.sql(s)} "
            f"{s.kw('AND')} {self.high.sql(s)}"
        )


@dataclass(frozen=True)
class IsNull(Expr):
    this: Expr
    negated: bool = False

    def sql(self, s: Style) -> str:
        return f"{self.this.sql(s)} {s.kw('IS NOT NULL' if self.negated else 'IS NULL')}"


@dataclass(frozen=True)
class Case(Expr):
    when: Expr
    then: Expr
    otherwise: Expr

    def sql(self, s: Style) -> str:
        return (
            f"{s.kw('CASE WHEN')} {self.when.sql(s)} {s.kw('THEN')} {self.then.sql(s)} "
            f"{s.kw('ELSE')} {self.otherwise.sql(s)} {s.kw('END')}"
        )


@dataclass(frozen=True)
class Cast(Expr):
    this: Expr
    to: str
    tried: bool = False  # TRY_CAST

    def sql(self, s: Style) -> str:
        word = s.kw("TRY_CAST" if self.tried else "CAST")
        return f"{word}({self.this.sql(s)} {s.kw('AS')} {s.kw(self.to)})"


@dataclass(frozen=True)
class Table:
    name: str
    alias: str | None = None

    def sql(self, s: Style) -> str:
        text = s.ident(self.name)
        return f"{text} {s.kw('AS')} {s.ident(self.alias)}" if self.alias else text


@dataclass(frozen=True)
class Derived:
    query: Query
    alias: str

    def sql(self, s: Style) -> str:
        return f"({self.query.sql(s)}) {s.kw('AS')} {s.ident(self.alias)}"


@dataclass(frozen=True)
class RawFrom:
    text: str

    def sql(self, s: Style) -> str:
        return self.text


FromItem = Table | Derived | RawFrom


@dataclass(frozen=True)
class Join:
    item: FromItem
    kind: str = "JOIN"  # JOIN | INNER JOIN | LEFT JOIN | CROSS JOIN | , | SEMI JOIN | ...
    on: Expr | None = None
    using: tuple[str, ...] = ()

    def sql(self, s: Style) -> str:
        if self.kind == ",":
            return f", {self.item.sql(s)}"
        text = f" {s.kw(self.kind)} {self.item.sql(s)}"
        if self.on is not None:
            text += f" {s.kw('ON')} {self.on.sql(s)}"
        if self.using:
            text += f" {s.kw('USING')} ({', '.join(s.ident(u) for u in self.using)})"
        return text


def render_from(source: FromItem, joins: Sequence[Join], s: Style) -> str:
    return source.sql(s) + "".join(j.sql(s) for j in joins)


@dataclass(frozen=True)
class Select:
    items: tuple[tuple[Expr, str | None], ...]
    source: FromItem | None = None
    joins: tuple[Join, ...] = ()
    where: Expr | None = None
    group: tuple[Expr, ...] = ()
    group_style: str = "expr"  # expr | ordinal | alias | all
    having: Expr | None = None
    order: tuple[tuple[Expr, bool], ...] = ()
    limit: int | None = None
    distinct: bool = False
    ctes: tuple[tuple[str, Query], ...] = ()

    def sql(self, s: Style) -> str:
        parts = []
        if self.ctes:
            ctes = [f"{s.ident(n)} {s.kw('AS')} ({q.sql(s)})" for n, q in self.ctes]
            parts.append(f"{s.kw('WITH')} {', '.join(ctes)}")
        items = [e.sql(s) + (f" {s.kw('AS')} {s.ident(a)}" if a else "") for e, a in self.items]
        parts.append(
            s.kw("SELECT DISTINCT" if self.distinct else "SELECT") + " " + ", ".join(items)
        )
        if self.source is not None:
            parts.append(f"{s.kw('FROM')} {render_from(self.source, self.joins, s)}")
        if self.where is not None:
            parts.append(f"{s.kw('WHERE')} {self.where.sql(s)}")
        if self.group or self.group_style == "all":
            parts.append(f"{s.kw('GROUP BY')} {self._group(s)}")
        if self.having is not None:
            parts.append(f"{s.kw('HAVING')} {self.having.sql(s)}")
        if self.order:
            keys = [e.sql(s) + (f" {s.kw('DESC')}" if d else "") for e, d in self.order]
            parts.append(f"{s.kw('ORDER BY')} {', '.join(keys)}")
        if self.limit is not None:
            parts.append(f"{s.kw('LIMIT')} {self.limit}")
        return " ".join(parts)

    def _group(self, s: Style) -> str:
        if self.group_style == "all":
            return s.kw("ALL")
        if self.group_style == "ordinal":
            return ", ".join(str(i + 1) for i in range(len(self.group)))
        if self.group_style == "alias":
            return ", ".join(s.ident(a) for _, a in self.items[: len(self.group)] if a)
        return ", ".join(e.sql(s) for e in self.group)


@dataclass(frozen=True)
class SetOp:
    left: Query
    op: str
    right: Query

    def sql(self, s: Style) -> str:
        return f"{self.left.sql(s)} {s.kw(self.op)} {self.right.sql(s)}"


@dataclass(frozen=True)
class RawQuery:
    text: str

    def sql(self, s: Style) -> str:
        return self.text


Query = Select | SetOp | RawQuery


@dataclass(frozen=True)
class Analysis:
    """A generated analysis and what the oracles need to judge it."""

    family: str
    sql: str
    keys: tuple[str, ...] = ()  # output columns that identify a row
    groups: tuple[Groups, ...] = ()  # how to recount the groups behind rows
    intent: str = "refused"  # what the threat model expects: informational


# -- frames: which inputs a scope reads, under which names ------------------------------


@dataclass(frozen=True)
class Frame:
    source: FromItem
    joins: tuple[Join, ...]
    t: str | None  # qualifier of transactions columns ("" unqualified); None: not read
    c: str | None
    optional: tuple[str, ...] = ()  # identities on the nullable side of an outer join

    def col(self, table: str, name: str) -> Col:
        qual = self.t if table == "t" else self.c
        return Col(name, qual or None)

    def identities(self) -> tuple[Col, ...]:
        found = []
        if self.t is not None:
            found.append(self.col("t", ID))
        if self.c is not None:
            found.append(self.col("c", ID))
        return tuple(found)

    @property
    def functions(self) -> frozenset[str]:
        rules = [r for r, q in ((BANK_RULE, self.t), (MERCHANT_RULE, self.c)) if q is not None]
        return frozenset.intersection(*(frozenset(r.scalar_functions) for r in rules))

    def groups(
        self, where: Expr | None, keys: Sequence[tuple[Expr, str]], joins: Sequence[Join] = ()
    ) -> Groups:
        return Groups(
            source=render_from(self.source, (*self.joins, *joins), PLAIN),
            where=where.sql(PLAIN) if where is not None else None,
            keys=tuple((e.sql(PLAIN), out) for e, out in keys),
            identities=tuple(c.sql(PLAIN) for c in self.identities()),
            optional=self.optional,
        )


@st.composite
def frames(draw: st.DrawFn, which: str | None = None) -> Frame:
    which = which or draw(st.sampled_from(["t", "t", "c", "tc", "ct"]))
    if which in ("t", "c"):
        name = T if which == "t" else C
        alias = draw(st.sampled_from([None, None, which, f"{which}1"]))
        qual = alias or draw(st.sampled_from(["", "", name]))
        return Frame(
            Table(name, alias), (), qual if which == "t" else None, qual if which == "c" else None
        )
    first, second = (T, C) if which == "tc" else (C, T)
    aliased = draw(st.booleans())
    q1, q2 = (first[0], second[0]) if aliased else (first, second)
    kind = draw(st.sampled_from(["JOIN", "INNER JOIN", "LEFT JOIN"]))
    left, right = Col(ID, q1), Col(ID, q2)
    if draw(st.booleans()):
        left, right = right, left
    using = draw(st.integers(0, 9)) == 0
    join = Join(
        Table(second, q2 if aliased else None),
        kind,
        on=None if using else Op("=", left, right),
        using=(ID,) if using else (),
    )
    quals = {first: q1, second: q2}
    optional = (Col(ID, q2).sql(PLAIN),) if kind == "LEFT JOIN" else ()
    return Frame(Table(first, q1 if aliased else None), (join,), quals[T], quals[C], optional)


# -- dimensions, predicates, aggregates -------------------------------------------------

CATEGORY_LITERALS = ["grocery", "travel", "fuel", "yacht", "none"]
SEGMENT_LITERALS = ["a", "b", "c", "vip"]
REGION_LITERALS = ["north", "south"]
DAYS = [datetime(2025, 12, 1), datetime(2026, 1, 1), datetime(2026, 2, 15), datetime(2026, 4, 1)]


def dimensions(frame: Frame) -> list[tuple[Expr, str]]:
    """Group keys over dimensions, with the name each is output as."""
    fns = frame.functions
    found: list[tuple[Expr, str]] = []
    if frame.t is not None:
        cat, ts = frame.col("t", "category"), frame.col("t", "ts")
        found += [
            (cat, "category"),
            (Case(In(cat, (Lit("grocery"), Lit("fuel"))), Lit("daily"), Lit("other")), "kind"),
        ]
        if "date_trunc" in fns:
            found.append((Fn("date_trunc", (Lit("month"), ts)), "month_start"))
        if "year" in fns:
            found.append((Fn("year", (ts,)), "yr"))
        if "month" in fns:
            found.append((Fn("month", (ts,)), "mon"))
    if frame.c is not None:
        seg, reg = frame.col("c", "segment"), frame.col("c", "region")
        found += [
            (seg, "segment"),
            (reg, "region"),
            (frame.col("c", "opted_in"), "opted_in"),
            (Case(Op("=", reg, Lit("north")), Lit("N"), Lit("S")), "half"),
            (Case(In(seg, (Lit("vip"), Lit("c"))), Lit("small"), Lit("large")), "size"),
        ]
        if "lower" in fns:
            found.append((Fn("lower", (seg,)), "seg"))
        if "upper" in fns:
            found.append((Fn("upper", (reg,)), "reg"))
    return found


@st.composite
def atom(draw: st.DrawFn, frame: Frame) -> Expr:
    options: list[Callable[[], Expr]] = []
    if frame.t is not None:
        cat, ts = frame.col("t", "category"), frame.col("t", "ts")
        cats = st.sampled_from(CATEGORY_LITERALS)
        options += [
            lambda: Op("=", cat, Lit(draw(cats))),
            lambda: Op("<>", cat, Lit(draw(cats))),
            lambda: In(
                cat,
                tuple(Lit(c) for c in draw(st.lists(cats, min_size=1, max_size=3, unique=True))),
            ),
            lambda: IsNull(cat, draw(st.booleans())),
            lambda: Between(ts, Lit(DAYS[0]), Lit(draw(st.sampled_from(DAYS[1:])))),
            lambda: Op(">=", ts, Lit(draw(st.sampled_from(DAYS)))),
        ]
        if "year" in frame.functions:
            options.append(
                lambda: Op("=", Fn("year", (ts,)), Lit(draw(st.sampled_from([2025, 2026]))))
            )
    if frame.c is not None:
        seg, reg = frame.col("c", "segment"), frame.col("c", "region")
        segs = st.sampled_from(SEGMENT_LITERALS)
        options += [
            lambda: Op("=", seg, Lit(draw(segs))),
            lambda: In(
                seg,
                tuple(Lit(v) for v in draw(st.lists(segs, min_size=1, max_size=3, unique=True))),
            ),
            lambda: Op("=", reg, Lit(draw(st.sampled_from(REGION_LITERALS)))),
            lambda: Op("<>", reg, Lit(draw(st.sampled_from(REGION_LITERALS)))),
            lambda: frame.col("c", "opted_in"),
            lambda: Not(frame.col("c", "opted_in")),
            lambda: IsNull(seg, negated=True),
        ]
    return draw(st.sampled_from(options))()


@st.composite
def predicate(draw: st.DrawFn, frame: Frame) -> Expr:
    first = draw(atom(frame))
    if draw(st.integers(0, 2)) == 0:
        return Op(draw(st.sampled_from(["AND", "OR"])), first, draw(atom(frame)))
    return first


def measures(frame: Frame) -> list[tuple[Expr, str]]:
    found: list[tuple[Expr, str]] = [(Agg("COUNT"), "n")]
    if frame.t is not None:
        amount = frame.col("t", "amount")
        found += [
            (Agg("COUNT", frame.col("t", ID), distinct=True), "buyers"),
            (Agg("COUNT", amount), "n_amount"),
            (Agg("COUNT", frame.col("t", "txn_id")), "n_txn"),
            (Agg("SUM", amount), "total"),
            (Agg("SUM", amount), "spend"),
            (Agg("AVG", amount), "mean"),
            (Agg("MIN", frame.col("t", "ts")), "first_at"),
            (Agg("MAX", frame.col("t", "ts")), "last_at"),
        ]
    if frame.c is not None:
        found += [
            (Agg("COUNT", frame.col("c", ID), distinct=True), "members"),
            (Agg("COUNT", frame.col("c", "age")), "n_age"),
            (Agg("AVG", frame.col("c", "age")), "mean_age"),
        ]
    return found


NUMERIC = (
    "total",
    "spend",
    "mean",
    "mean_age",
    "n",
    "n_amount",
    "n_txn",
    "n_age",
    "buyers",
    "members",
)


@st.composite
def measure(draw: st.DrawFn, frame: Frame) -> tuple[Expr, str]:
    """An allowed aggregate, sometimes wrapped (ROUND, arithmetic, a cast) or
    given an aggregate FILTER."""
    expr, name = draw(st.sampled_from(measures(frame)))
    roll = draw(st.integers(0, 11))
    if roll == 5 and isinstance(expr, Agg):  # an aggregate FILTER on a dimension
        return replace(expr, where=draw(atom(frame))), f"{name}_f"
    if name not in NUMERIC or roll > 4 or (roll == 0 and "round" not in frame.functions):
        return expr, name
    other, other_name = draw(st.sampled_from([m for m in measures(frame) if m[1] in NUMERIC]))
    forms = [
        (Fn("round", (expr, Lit(2))), f"{name}_r"),
        (Op("/", expr, Agg("COUNT")), f"{name}_per_row"),
        (Cast(expr, draw(st.sampled_from(["DOUBLE", "BIGINT"]))), f"{name}_c"),
        (Op("*", expr, Lit(100)), f"{name}_x100"),
        (Op("+", expr, other), f"{name}_plus_{other_name}"),
    ]
    return forms[roll]


@st.composite
def having(draw: st.DrawFn, frame: Frame) -> Expr:
    # literals far below any perturbation delta, so a perturbed member always crosses
    options: list[Expr] = [
        Op(">", Agg("COUNT"), Lit(draw(st.integers(0, 6)))),
        Op(">=", Agg("COUNT", frame.identities()[0], distinct=True), Lit(draw(st.integers(1, 5)))),
    ]
    if frame.t is not None:
        options.append(
            Op(">", Agg("SUM", frame.col("t", "amount")), Lit(draw(st.integers(0, 2000))))
        )
        options.append(
            Op("<", Agg("AVG", frame.col("t", "amount")), Lit(draw(st.integers(50, 900))))
        )
    if frame.c is not None:
        options.append(Op(">", Agg("AVG", frame.col("c", "age")), Lit(draw(st.integers(0, 100)))))
    return draw(st.sampled_from(options))


@dataclass(frozen=True)
class Scope:
    """One aggregating SELECT over a frame, with its group keys and measure names."""

    select: Select
    frame: Frame
    keys: tuple[tuple[Expr, str], ...]
    measures: tuple[str, ...]
    extra_joins: tuple[Join, ...] = ()

    def groups(self, names: Sequence[str] | None = None) -> Groups:
        outs = names if names is not None else [n for _, n in self.keys]
        keys = [(e, out) for (e, _), out in zip(self.keys, outs, strict=True)]
        return self.frame.groups(self.select.where, keys, self.extra_joins)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}{seen[name]}")
    return out


@st.composite
def scope(
    draw: st.DrawFn,
    frame: Frame | None = None,
    *,
    min_keys: int = 0,
    max_keys: int = 2,
    keys: Sequence[tuple[Expr, str]] | None = None,
    where: Expr | bool | None = True,
    order: bool = True,
    extra_joins: tuple[Join, ...] = (),
) -> Scope:
    """An aggregating SELECT: keys first (output under their names), then 1-3 measures."""
    frame = frame or draw(frames())
    if keys is None:
        dims = dimensions(frame)
        picked = draw(
            st.lists(
                st.sampled_from(range(len(dims))), min_size=min_keys, max_size=max_keys, unique=True
            )
        )
        keys = [dims[i] for i in picked]
    chosen = draw(st.lists(measure(frame), min_size=1, max_size=3, unique_by=lambda m: m[1]))
    names = _unique([n for _, n in keys] + [n for _, n in chosen])
    key_names, measure_names = names[: len(keys)], names[len(keys) :]
    items: list[tuple[Expr, str | None]] = []
    for (expr, _), name in zip(keys, key_names, strict=True):
        bare = isinstance(expr, Col) and expr.name == name and draw(st.booleans())
        items.append((expr, None if bare else name))
    items += [(e, n) for (e, _), n in zip(chosen, measure_names, strict=True)]
    if where is True:
        where = draw(predicate(frame)) if draw(st.booleans()) else None
    group_style = draw(st.sampled_from(["expr", "expr", "ordinal", "all"])) if keys else "expr"
    if group_style == "all" and any(isinstance(e, Agg) and e.where for e, _ in chosen):
        group_style = "expr"
    select = Select(
        tuple(items),
        frame.source,
        (*frame.joins, *extra_joins),
        where if isinstance(where, Expr) else None,
        tuple(e for e, _ in keys),
        group_style,
        having=draw(having(frame)) if draw(st.integers(0, 3)) == 0 else None,
    )
    if order and draw(st.booleans()):
        select = _ordered(draw, select, key_names, measure_names)
    scope_keys = tuple((e, n) for (e, _), n in zip(keys, key_names, strict=True))
    return Scope(select, frame, scope_keys, tuple(measure_names), extra_joins)


def _ordered(draw: st.DrawFn, select: Select, keys: Sequence[str], values: Sequence[str]) -> Select:
    """ORDER BY keys (ties broken by every key, so LIMIT is deterministic), maybe
    led by a measure, then maybe LIMIT.

    A LIMIT over several groups makes a row's presence depend on other groups:
    on their measures when a measure leads the order, on their HAVING when one
    filters them. The influence oracle would charge that to whoever is in one
    group and not the other (ranking groups of k is not a leak), so LIMIT comes
    only where neither can happen."""
    by: list[tuple[Expr, bool]] = []
    if values and draw(st.booleans()):
        by.append((Col(draw(st.sampled_from(list(values)))), draw(st.booleans())))
    by += [(Col(k), draw(st.booleans())) for k in keys]
    if not by:
        return select
    ranked = len(by) > len(keys) or select.having is not None
    limit = None if ranked and keys else draw(st.sampled_from([None, 1, 2, 3]))
    return replace(select, order=tuple(by), limit=limit)


# -- families ---------------------------------------------------------------------------

Family = Callable[[st.DrawFn, Style], Analysis]


def _intent(sql: str) -> str:
    """Allowed shapes with an aggregate FILTER: the threat model's differencing."""
    return "refused" if " filter (" in sql.lower() else "allowed"


def family_aggregate(draw: st.DrawFn, style: Style) -> Analysis:
    s = draw(scope())
    keys = tuple(n for _, n in s.keys)
    sql = s.select.sql(style)
    return Analysis("aggregate", sql, keys, (s.groups(),), _intent(sql))


Outer = tuple[Select, tuple[str, ...], Groups]
TIMES = ("first_at", "last_at")


def _reaggregate(draw: st.DrawFn, inner: Scope, where: Expr | None) -> Outer:
    """SUM/MAX/MIN/AVG over the inner groups, by at most one of their keys.

    An outer row keyed K exists only if some inner group (K, ...) survived, so
    the union of those groups is large; a keyless outer row over no surviving
    group (COUNT(*) = 0) holds nothing, and influence judges values either way."""
    key_names = [n for _, n in inner.keys]
    kept = key_names[: draw(st.integers(0, min(1, len(key_names) - 1)))]
    items: list[tuple[Expr, str | None]] = [(Col(k), None) for k in kept]
    numeric = [m for m in inner.measures if not m.startswith(TIMES)]
    functions = st.sampled_from(["SUM", "MAX", "MIN", "AVG"])
    chosen = draw(st.lists(functions, min_size=1, max_size=2, unique=True)) if numeric else []
    items += [(Agg(fn, Col(draw(st.sampled_from(numeric)))), f"{fn.lower()}_of") for fn in chosen]
    items.append((Agg("COUNT"), "groups_n"))
    groups = inner.groups()
    groups = replace(groups, keys=tuple(k for k in groups.keys if k[1] in kept))
    return Select(tuple(items), None, (), where, tuple(Col(k) for k in kept)), tuple(kept), groups


def _project(draw: st.DrawFn, inner: Scope, where: Expr | None) -> Outer:
    """Keys (maybe renamed), measures (maybe in arithmetic), maybe ordered and limited."""
    key_names = [n for _, n in inner.keys]
    renamed = [f"{k}_out" if draw(st.booleans()) else k for k in key_names]
    items = [(Col(k), r if r != k else None) for k, r in zip(key_names, renamed, strict=True)]
    for m in draw(
        st.lists(st.sampled_from(list(inner.measures)), min_size=1, max_size=3, unique=True)
    ):
        form = 0 if m.startswith(TIMES) else draw(st.integers(0, 3))
        if form == 1:
            items.append((Op("*", Col(m), Lit(2)), f"{m}_twice"))
        elif form == 2:
            items.append((Op("+", Col(m), Lit(1)), f"{m}_plus"))
        else:
            items.append((Col(m), None))
    outer = Select(tuple(items), None, (), where)
    if renamed and draw(st.booleans()):
        stable = inner.select.having is None and not isinstance(where, Op)
        outer = replace(
            outer,
            order=tuple((Col(k), False) for k in key_names),
            limit=draw(st.sampled_from([None, 1, 2])) if stable else None,
        )
    return outer, tuple(renamed), inner.groups(renamed)


def _outer_filter(draw: st.DrawFn, inner: Scope) -> Expr | None:
    """An outer WHERE on an inner measure (literals far below any delta) or key."""
    numeric = [m for m in inner.measures if not m.startswith(TIMES)]
    if not draw(st.booleans()):
        return None
    if numeric and draw(st.booleans()):
        return Op(
            draw(st.sampled_from([">", "<"])),
            Col(draw(st.sampled_from(numeric))),
            Lit(draw(st.integers(0, 50))),
        )
    if inner.keys:
        return IsNull(Col(draw(st.sampled_from([n for _, n in inner.keys]))), negated=True)
    return None


def family_nested(draw: st.DrawFn, style: Style) -> Analysis:
    """An aggregating CTE or derived table, then an outer projection, filter,
    rename or re-aggregation of its groups."""
    inner = draw(scope(order=False, min_keys=draw(st.integers(0, 1))))
    name = draw(st.sampled_from(["s", "agg", "by_group", "g"]))
    shape_ = draw(st.sampled_from(["project", "project", "star", "reaggregate"]))
    where = _outer_filter(draw, inner)
    if shape_ == "reaggregate" and inner.keys:
        outer, outer_keys, groups = _reaggregate(draw, inner, where)
    elif shape_ == "star":
        outer = Select(((Raw("*"), None),), None, (), where)
        outer_keys, groups = tuple(n for _, n in inner.keys), inner.groups()
    else:
        outer, outer_keys, groups = _project(draw, inner, where)
    container = draw(st.sampled_from(["cte", "cte", "derived", "chain"]))
    if container == "derived":
        query = replace(outer, source=Derived(inner.select, name))
    elif container == "chain":
        middle = Select(((Raw("*"), None),), Table(name), (), None)
        query = replace(
            outer, source=Table(f"{name}2"), ctes=((name, inner.select), (f"{name}2", middle))
        )
    else:
        query = replace(outer, source=Table(name), ctes=((name, inner.select),))
    judged = (groups,) if outer_keys or shape_ != "reaggregate" else ()
    sql = query.sql(style)
    return Analysis(f"nested/{shape_}/{container}", sql, outer_keys, judged, _intent(sql))


def _exclusion(
    draw: st.DrawFn, frame: Frame
) -> tuple[Expr | None, tuple[Join, ...], tuple[tuple[str, Query], ...], str]:
    """Something that removes one person or a tiny group from a scope: a
    dimension filter, an anti-join to a literal, an identity or measure filter."""
    person = Lit(draw(st.sampled_from(["c1", "c2", "c3"])))
    ident = frame.identities()[0]
    kinds = ["literal", "identity", "measure"]
    if frame.t is not None:
        kinds.append("yacht")
    if frame.c is not None:
        kinds.append("vip")
    kind = draw(st.sampled_from(kinds))
    if kind == "yacht":
        cat = frame.col("t", "category")
        return (
            draw(
                st.sampled_from(
                    [
                        Op("<>", cat, Lit("yacht")),
                        Not(Op("=", cat, Lit("yacht"))),
                        In(cat, (Lit("grocery"), Lit("travel"), Lit("fuel"))),
                    ]
                )
            ),
            (),
            (),
            kind,
        )
    if kind == "vip":
        return Op("<>", frame.col("c", "segment"), Lit("vip")), (), (), kind
    if kind == "identity":
        return (
            draw(
                st.sampled_from(
                    [
                        Op("<>", ident, person),
                        In(ident, (person,), negated=True),
                        Op(">", ident, person),
                    ]
                )
            ),
            (),
            (),
            kind,
        )
    if kind == "measure":
        if frame.t is not None:
            return Op("<", frame.col("t", "amount"), Lit(900)), (), (), kind
        return Op("<", frame.col("c", "age"), Lit(80)), (), (), kind
    literal = draw(st.sampled_from(["select", "values", "cte", "unnest"]))
    v = Col("id", "v")
    ctes: tuple[tuple[str, Query], ...] = ()
    if literal == "select":
        item: FromItem = Derived(Select(((person, "id"),)), "v")
    elif literal == "values":
        item = RawFrom(f"(VALUES ({person.sql(PLAIN)})) AS v(id)")
    elif literal == "unnest":
        item = RawFrom(f"unnest([{person.sql(PLAIN)}]) AS v(id)")
    else:
        item = Table("lit", "v")
        ctes = (("lit", Select(((person, "id"),))),)
    join = Join(item, draw(st.sampled_from(["LEFT JOIN", "LEFT OUTER JOIN"])), on=Op("=", ident, v))
    return IsNull(v), (join,), ctes, f"literal-{literal}"


def family_differencing(draw: st.DrawFn, style: Style) -> Analysis:
    """Everyone minus everyone-but-one: two aggregating scopes combined by
    arithmetic, side by side, by a join, scalar subqueries, or a FILTER."""
    frame = draw(frames())
    exclusion, joins, lit_ctes, kind = _exclusion(draw, frame)
    keyed = draw(st.integers(0, 3)) == 0
    key = [draw(st.sampled_from(dimensions(frame)))] if keyed else []
    value_expr, _ = draw(
        st.sampled_from(
            [m for m in measures(frame) if m[1] in ("total", "mean", "mean_age")] or measures(frame)
        )
    )
    everyone = draw(scope(frame, keys=key, where=None, order=False))
    everyone = replace(
        everyone,
        select=replace(
            everyone.select,
            items=(*everyone.select.items[: len(key)], (value_expr, "s")),
            having=None,
        ),
    )
    others_where = exclusion
    others = replace(
        everyone,
        select=replace(everyone.select, joins=(*everyone.select.joins, *joins), where=others_where),
        extra_joins=joins,
    )
    k = key[0][1] if key else None
    groups = (everyone.groups(), others.groups())
    combine = draw(
        st.sampled_from(["minus", "minus", "side", "derived", "scalar", "filter", "join-true"])
    )
    if (combine == "filter" and joins) or (combine == "scalar" and key):
        combine = "minus"
    if combine == "filter":
        agg = value_expr
        assert isinstance(agg, Agg)
        items = [
            *everyone.select.items[: len(key)],
            (Op("-", agg, replace(agg, where=exclusion)), "d"),
        ]
        query: Query = replace(everyone.select, items=tuple(items))
        return Analysis(
            f"differencing/{kind}/filter", query.sql(style), (k,) if k else (), (everyone.groups(),)
        )
    if combine == "scalar":
        difference = Op(
            "-", Raw(f"({everyone.select.sql(style)})"), Raw(f"({others.select.sql(style)})")
        )
        query = Select(((difference, "d"),), ctes=lit_ctes)
        return Analysis(f"differencing/{kind}/scalar", query.sql(style), (), groups)
    a, b = Col("s", "e"), Col("s", "o")
    items: list[tuple[Expr, str | None]] = [(Col(k, "e"), k)] if k else []
    items += [(Op("-", a, b), "d")] if combine != "side" else [(a, "s_all"), (b, "s_rest")]
    if k:
        join = Join(Table("o"), "JOIN", on=Op("=", Col(k, "e"), Col(k, "o")))
    elif combine == "join-true":
        join = Join(Table("o"), "JOIN", on=draw(st.sampled_from([Raw("TRUE"), Raw("1 = 1")])))
    else:
        join = Join(Table("o"), draw(st.sampled_from([",", "CROSS JOIN"])))
    if combine == "derived":
        query = Select(
            tuple(items),
            Derived(everyone.select, "e"),
            (replace(join, item=Derived(others.select, "o")),),
            ctes=lit_ctes,
        )
    else:
        query = Select(
            tuple(items),
            Table("e"),
            (join,),
            ctes=(*lit_ctes, ("e", everyone.select), ("o", others.select)),
        )
    return Analysis(f"differencing/{kind}/{combine}", query.sql(style), (k,) if k else (), groups)


def family_dimension_join(draw: st.DrawFn, style: Style) -> Analysis:
    """Two aggregating CTEs grouped by the same dimension, joined on it (with the
    same filter, or different ones: then one can difference the other)."""
    table = draw(st.sampled_from(["t", "c"]))
    f1 = draw(frames(table))
    f2 = draw(frames(draw(st.sampled_from([table, "tc", "ct"]))))
    k1 = [d for d in dimensions(f1) if isinstance(d[0], Col)]
    expr1, name = draw(st.sampled_from(k1))
    assert isinstance(expr1, Col)
    expr2 = f2.col(table, expr1.name)
    w1 = draw(predicate(f1)) if draw(st.booleans()) else None
    a = draw(scope(f1, keys=[(expr1, name)], where=w1, order=False))
    same = draw(st.booleans()) and f2 == f1
    w2 = w1 if same else (draw(predicate(f2)) if draw(st.booleans()) else None)
    b = draw(scope(f2, keys=[(expr2, name)], where=w2, order=False))
    ka, kb = a.keys[0][1], b.keys[0][1]
    ma, mb = draw(st.sampled_from(a.measures)), draw(st.sampled_from(b.measures))
    items: list[tuple[Expr, str | None]] = [
        (Col(ka, "a"), "k"),
        (Col(ma, "a"), "a_value"),
        (Col(mb, "b"), "b_value"),
    ]
    if draw(st.booleans()):
        items.append((Op("-", Col(ma, "a"), Col(mb, "b")), "diff"))
    query = Select(
        tuple(items),
        Table("a"),
        (
            Join(
                Table("b"),
                draw(st.sampled_from(["JOIN", "INNER JOIN"])),
                on=Op("=", Col(ka, "a"), Col(kb, "b")),
            ),
        ),
        ctes=(("a", a.select), ("b", b.select)),
    )
    return Analysis(
        "dimension-join",
        query.sql(style),
        ("k",),
        (a.groups(["k"]), b.groups(["k"])),
        "allowed" if same else "refused",
    )


def family_literal_join(draw: st.DrawFn, style: Style) -> Analysis:
    """A literal list of identities joined to the identity column."""
    frame = draw(frames(draw(st.sampled_from(["t", "c", "tc"]))))
    people = draw(
        st.lists(st.sampled_from([f"c{i}" for i in range(8)]), min_size=1, max_size=4, unique=True)
    )
    literal = draw(st.sampled_from(["values", "select", "unnest", "cte", "semi"]))
    rows = ", ".join(f"('{p}')" for p in people)
    ctes: tuple[tuple[str, Query], ...] = ()
    if literal == "select":
        item: FromItem = Derived(Select(((Lit(people[0]), "id"),)), "v")
    elif literal == "unnest":
        item = RawFrom(f"unnest([{', '.join(repr(p) for p in people)}]) AS v(id)")
    elif literal == "cte":
        item = Table("lit", "v")
        ctes = (("lit", RawQuery(f"SELECT * FROM (VALUES {rows}) AS x(id)")),)
    else:
        item = RawFrom(f"(VALUES {rows}) AS v(id)")
    kind = "SEMI JOIN" if literal == "semi" else draw(st.sampled_from(["JOIN", "INNER JOIN"]))
    join = Join(item, kind, on=Op("=", frame.identities()[0], Col("id", "v")))
    s = draw(scope(frame, extra_joins=(join,), max_keys=1))
    query = replace(s.select, ctes=ctes)
    keys = tuple(n for _, n in s.keys)
    return Analysis(f"literal-join/{literal}", query.sql(style), keys, (s.groups(),))


def family_pinning(draw: st.DrawFn, style: Style) -> Analysis:
    """Filters (or HAVING) on the identity, a measure, or a non-dimension."""
    frame = draw(frames())
    ident = frame.identities()[0]
    person = Lit(draw(st.sampled_from(["c1", "c2", "c3", "c4"])))
    options: list[Expr] = [
        Op("=", ident, person),
        In(ident, (person, Lit("c5"))),
        Op("LIKE", ident, Lit(f"{person.value}%")),
        Op("<>", ident, person),
        Fn("starts_with", (ident, person)),
        Op(">", Fn("length", (ident,)), Lit(2)),
    ]
    if frame.t is not None:
        options += [
            Op(">", frame.col("t", "amount"), Lit(500)),
            Op("=", frame.col("t", "txn_id"), Lit(3)),
        ]
    if frame.c is not None:
        options += [
            Between(frame.col("c", "age"), Lit(30), Lit(40)),
            Op("LIKE", frame.col("c", "email"), Lit("c1@%")),
        ]
    bad = draw(st.sampled_from(options))
    s = draw(scope(frame, where=None, max_keys=1))
    where = bad if draw(st.booleans()) else Op("AND", draw(predicate(frame)), bad)
    s = replace(s, select=replace(s.select, where=where))
    return Analysis("pinning", s.select.sql(style), tuple(n for _, n in s.keys), (s.groups(),))


def family_rows(draw: st.DrawFn, style: Style) -> Analysis:
    """Raw rows, DISTINCT, and grouping by the identity or by non-dimensions."""
    frame = draw(frames(draw(st.sampled_from(["t", "c", "tc"]))))
    columns = []
    if frame.t is not None:
        columns += [frame.col("t", n) for n in ("category", "amount", "txn_id", ID, "ts")]
    if frame.c is not None:
        columns += [frame.col("c", n) for n in ("segment", "age", "email", ID)]
    picked = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=2, unique=True))
    names = _unique([c.name for c in picked])
    items = tuple((c, n) for c, n in zip(picked, names, strict=True))
    keys = [(c, n) for c, n in items]
    how = draw(st.sampled_from(["rows", "distinct", "group", "group-all", "top"]))
    select = Select(items, frame.source, frame.joins)
    if how == "distinct":
        select = replace(select, distinct=True)
    elif how in ("group", "group-all"):
        agg, agg_name = draw(st.sampled_from(measures(frame)))
        select = replace(
            select,
            items=(*items, (agg, f"{agg_name}_v")),
            group=tuple(c for c, _ in items),
            group_style="all" if how == "group-all" else "expr",
        )
    elif how == "top":
        select = replace(
            select, order=tuple((c, True) for c in picked), limit=draw(st.integers(1, 3))
        )
    groups = frame.groups(None, keys)
    dims = set(BANK_RULE.dimensions) | set(MERCHANT_RULE.dimensions)
    allowed = how.startswith("group") and all(c.name in dims for c in picked)
    return Analysis(
        f"rows/{how}",
        select.sql(style),
        tuple(names),
        (groups,),
        "allowed" if allowed else "refused",
    )


_TEMPLATE_NAMES = (
    "t",
    "c",
    "category",
    "amount",
    "ts",
    "txn_id",
    "segment",
    "region",
    "age",
    "email",
    "opted_in",
    "customer_hash",
)
_T_BY_CATEGORY = Groups("transactions", None, (("category", "category"),), ("customer_hash",))
_T_ALL = Groups("transactions", None, (), ("customer_hash",))

# (template, output keys, groups): $names are spelled in the drawn style
TEMPLATES: list[tuple[str, tuple[str, ...], tuple[Groups, ...]]] = [
    # windows
    (
        "SELECT $category, SUM($amount) OVER (PARTITION BY $category) AS s FROM $t",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT $category, $amount, ROW_NUMBER() OVER (ORDER BY $amount DESC) AS r FROM $t "
        "QUALIFY r = 1",
        (),
        (),
    ),
    (
        "SELECT $category, SUM($amount) AS s, RANK() OVER (ORDER BY SUM($amount) DESC) AS r "
        "FROM $t GROUP BY $category",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT $category, SUM($amount) AS s, SUM(SUM($amount)) OVER () AS total FROM $t "
        "GROUP BY $category",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT $category, COUNT(*) AS n FROM $t GROUP BY $category QUALIFY ROW_NUMBER() OVER"
        " (ORDER BY COUNT(*)) = 1",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT $category, SUM($amount) - LAG(SUM($amount)) OVER (ORDER BY $category) AS d "
        "FROM $t GROUP BY $category",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT AVG($amount) OVER (ORDER BY $ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS "
        "m FROM $t",
        (),
        (),
    ),
    (
        "SELECT $category, SUM($amount) OVER w AS s FROM $t WINDOW w AS (PARTITION BY $category)",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT 'all' AS g, SUM($amount) AS s FROM $t UNION ALL SELECT 'rest' AS g, "
        "SUM($amount) AS s FROM $t WHERE $category <> 'yacht'",
        ("g",),
        (),
    ),
    (
        "SELECT 'all' AS g, AVG($amount) AS s FROM $t UNION SELECT 'rest', AVG($amount) FROM "
        "$t WHERE $customer_hash <> 'c1'",
        ("g",),
        (),
    ),
    (
        "SELECT 'all' AS g, SUM($amount) AS s FROM $t UNION ALL BY NAME SELECT SUM($amount) "
        "AS s, 'rest' AS g FROM $t WHERE $category <> 'yacht'",
        ("g",),
        (),
    ),
    ("SELECT $category FROM $t INTERSECT SELECT $segment FROM $c", (), ()),
    ("SELECT $customer_hash FROM $t EXCEPT SELECT $customer_hash FROM $c", (), ()),
    ("WITH u AS (SELECT COUNT(*) AS n FROM $t UNION SELECT 1) SELECT SUM(n) AS n FROM u", (), ()),
    # set operations
    (
        "SELECT COUNT(*) AS n FROM (SELECT $customer_hash FROM $t UNION SELECT $customer_hash"
        " FROM $c) x",
        (),
        (),
    ),
    (
        "SELECT COUNT(*) AS n, SUM($amount) AS s FROM $t WHERE $customer_hash IN (SELECT "
        "$customer_hash FROM $c WHERE $segment = 'vip')",
        (),
        (),
    ),
    (
        "SELECT $category, (SELECT COUNT(*) FROM $c) AS m, COUNT(*) AS n FROM $t GROUP BY "
        "$category",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    (
        "SELECT COUNT(*) AS n FROM $c x WHERE EXISTS (SELECT 1 FROM $t y WHERE "
        "y.$customer_hash = x.$customer_hash AND y.$category = 'yacht')",
        (),
        (),
    ),
    ("SELECT SUM($amount) AS s FROM $t WHERE $amount > (SELECT AVG($amount) FROM $t)", (), ()),
    (
        "SELECT (SELECT SUM($amount) FROM $t) - (SELECT SUM($amount) FROM $t WHERE $category "
        "<> 'yacht') AS d",
        (),
        (),
    ),
    (
        "SELECT $category, COUNT(*) AS n FROM $t GROUP BY $category HAVING SUM($amount) > "
        "(SELECT SUM($amount) / 2 FROM $t)",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    ("SELECT ARRAY(SELECT $amount FROM $t) AS a", (), ()),
    (
        "SELECT COUNT(*) AS n FROM $t WHERE $customer_hash = ANY (SELECT $customer_hash FROM "
        "$c WHERE $age > 80)",
        (),
        (),
    ),
    ("PIVOT $t ON $category USING SUM($amount) GROUP BY $customer_hash", (), ()),
    # subqueries
    ("SELECT * FROM (PIVOT $t ON $category USING SUM($amount))", (), ()),
    ("PIVOT $c ON $segment USING AVG($age)", (), ()),
    ("UNPIVOT $c ON $segment, $region INTO NAME k VALUE v", (), ()),
    ("SELECT * FROM (UNPIVOT $c ON $segment, $region INTO NAME k VALUE v)", (), ()),
    ("SUMMARIZE $t", (), ()),
    ("SELECT * FROM (SUMMARIZE $t)", (), ()),
    ("SELECT * FROM (SUMMARIZE SELECT $amount FROM $t)", (), ()),
    ("DESCRIBE $t", (), ()),
    ("FROM $t", (), ()),
    ("FROM $t SELECT $amount", (), ()),
    # DuckDB statements and clauses
    ("FROM $t SELECT COUNT(*) AS n", (), (_T_ALL,)),
    ("SELECT $category, COUNT(*) AS n FROM $t GROUP BY ROLLUP ($category)", ("category",), ()),
    ("SELECT $category, SUM($amount) AS s FROM $t GROUP BY CUBE ($category)", ("category",), ()),
    (
        "SELECT $category, SUM($amount) AS s FROM $t GROUP BY GROUPING SETS (($category), ())",
        ("category",),
        (),
    ),
    ("SELECT MAX($ts, 3) AS m FROM $t", (), (_T_ALL,)),
    ("SELECT MIN($ts, 2) AS m FROM $t", (), (_T_ALL,)),
    (
        "SELECT $category, MAX($ts, 5) AS m FROM $t GROUP BY $category",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    ("SELECT MAX($amount, 2) AS m FROM $t", (), (_T_ALL,)),
    ("SELECT ARG_MAX($customer_hash, $amount) AS who FROM $t", (), (_T_ALL,)),
    ("SELECT LIST($amount) AS l FROM $t", (), (_T_ALL,)),
    (
        "SELECT $category, HISTOGRAM($amount) AS h FROM $t GROUP BY 1",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    ("SELECT $category, [SUM($amount)] AS l FROM $t GROUP BY 1", ("category",), (_T_BY_CATEGORY,)),
    (
        "SELECT {'s': SUM($amount)} AS st FROM $t",
        (),
        (_T_ALL,),
    ),
    (
        "SELECT $category, COUNT(*) AS n FROM $t GROUP BY $category ORDER BY MAX($amount) "
        "DESC LIMIT 1",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    ("SELECT COUNT(*) AS n, SUM($amount) AS s FROM $t USING SAMPLE 50%", (), ()),
    ("SELECT SUM($amount) AS s FROM $t TABLESAMPLE 3 ROWS", (), ()),
    # aggregates that return values
    (
        "SELECT $category, SUM($amount) AS s FROM $t USING SAMPLE 1 ROWS GROUP BY 1",
        ("category",),
        (),
    ),
    (
        "SELECT SUM(l.x) AS s FROM $t AS t, LATERAL (SELECT CASE WHEN t.$customer_hash = 'c1'"
        " THEN t.$amount ELSE 0 END AS x) l",
        (),
        (_T_ALL,),
    ),
    ("SELECT COUNT(*) AS n FROM $t, unnest([$amount]) u(x)", (), ()),
    (
        "SELECT l.x, COUNT(*) AS n FROM $t AS t, LATERAL (SELECT t.$amount AS x) l GROUP BY l.x",
        ("x",),
        (),
    ),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT "
        "COUNT(*) AS n FROM $t",
        (),
        (_T_ALL,),
    ),
    (
        "SELECT * FROM query('SELECT * FROM transactions')",
        (),
        (),
    ),
    (
        "SELECT * FROM query_table('transactions')",
        (),
        (),
    ),
    (
        "SELECT COUNT(*) AS n FROM read_csv('/etc/passwd')",
        (),
        (),
    ),
    ("SELECT * FROM duckdb_tables()", (), ()),
    ("SELECT COUNT(*) AS n FROM $t AS t JOIN range(3) r ON TRUE", (), (_T_ALL,)),
    ("SELECT version() AS v, COUNT(*) AS n FROM $t", (), (_T_ALL,)),
    (
        "SELECT current_setting('threads') AS s, COUNT(*) AS n FROM $t",
        (),
        (_T_ALL,),
    ),
    (
        "SELECT getenv('HOME') AS h, COUNT(*) AS n FROM $t",
        (),
        (_T_ALL,),
    ),
    # samples
    (
        "SELECT COUNT(*) AS n FROM $t WHERE current_user = 'x'",
        (),
        (_T_ALL,),
    ),
    ("SELECT COUNT(*) AS n FROM main.$t", (), (_T_ALL,)),
    (
        "SELECT $category, SUM($amount) AS s FROM memory.main.$t GROUP BY 1",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    ("SELECT COUNT(*) AS n FROM _fuzz_transactions", (), ()),
    # lateral
    (
        "SELECT COLUMNS('.*') FROM $t",
        (),
        (),
    ),
    ("SELECT MAX(COLUMNS(*)) FROM $t", (), ()),
    ("SELECT * EXCLUDE ($amount) FROM $t", (), ()),
    ("SELECT COUNT(*) AS n, $t.* FROM $t GROUP BY ALL", (), ()),
    # recursion, table and environment functions, catalogs
    ("SELECT COUNT(*) AS n FROM $t AS t POSITIONAL JOIN $c AS c", (), ()),
    (
        "SELECT COUNT(*) AS n, SUM(t.$amount) AS s FROM $t AS t SEMI JOIN (SELECT 'c1' AS id)"
        " v ON t.$customer_hash = v.id",
        (),
        (),
    ),
    (
        "SELECT COUNT(*) AS n, SUM(t.$amount) AS s FROM $t AS t ANTI JOIN (SELECT 'c1' AS id)"
        " v ON t.$customer_hash = v.id",
        (),
        (),
    ),
    ("SELECT COUNT(*) AS n FROM $t AS t NATURAL JOIN $c AS c", (), ()),
    (
        "SELECT COUNT(*) AS n FROM $t AS t ASOF JOIN $c AS c ON t.$customer_hash = "
        "c.$customer_hash AND t.$txn_id >= c.$age",
        (),
        (),
    ),
    (
        "SELECT COUNT(*) AS n FROM $t WHERE $customer_hash SIMILAR TO 'c1'",
        (),
        (),
    ),
    (
        "SELECT COUNT(*) AS n FROM $t WHERE $customer_hash GLOB 'c1*'",
        (),
        (),
    ),
    (
        "SELECT COUNT(*) AS n FROM $t WHERE $customer_hash ^@ 'c1'",
        (),
        (),
    ),
    (
        "SELECT $category, COUNT(*) AS n FROM $t GROUP BY $category HAVING "
        "ANY_VALUE($customer_hash) = 'c1'",
        ("category",),
        (_T_BY_CATEGORY,),
    ),
    ("SELECT COUNT(*) AS n FROM $t LIMIT 1 OFFSET 0", (), (_T_ALL,)),
    ("SELECT $amount FROM $t ORDER BY $amount LIMIT 1 OFFSET 2", (), ()),
]
KNOWN_FUNCTIONS = [
    "md5", "hash", "concat", "left", "split_part", "regexp_extract", "string_split",
    "strftime", "epoch", "to_json", "typeof", "length", "reverse", "ascii", "bit_length",
    "sqrt", "ln", "sign", "list_value", "struct_pack", "printf", "format", "trim",
]  # fmt: skip


def family_template(draw: st.DrawFn, style: Style) -> Analysis:
    text, keys, groups = draw(st.sampled_from(TEMPLATES))
    names = {n: style.ident(n) for n in _TEMPLATE_NAMES}
    names["t"], names["c"] = style.ident(T), style.ident(C)
    sql = string.Template(text).substitute(names)
    return Analysis(f"template/{text[:40]}", sql, keys, groups)


def family_functions(draw: st.DrawFn, style: Style) -> Analysis:
    """Functions outside the catalogue (real DuckDB ones and made-up names)."""
    name = draw(
        st.one_of(
            st.sampled_from(KNOWN_FUNCTIONS),
            st.text(string.ascii_lowercase + "_", min_size=2, max_size=12).filter(
                lambda n: n[0] != "_"
            ),
        )
    )
    frame = draw(frames(draw(st.sampled_from(["t", "c"]))))
    target = (
        frame.col("t", draw(st.sampled_from(["category", "amount", ID])))
        if frame.t is not None
        else frame.col("c", draw(st.sampled_from(["segment", "age", ID])))
    )
    where = draw(st.booleans())
    s = draw(
        scope(frame, keys=[] if where else [(Fn(name, (target,)), "x")], where=None, order=False)
    )
    if where:
        s = replace(s, select=replace(s.select, where=Op("=", Fn(name, (target,)), Lit("x"))))
    return Analysis(
        f"function/{name}", s.select.sql(style), tuple(n for _, n in s.keys), (s.groups(),)
    )


NARROW_TYPES = ["TINYINT", "SMALLINT", "UTINYINT", "INTEGER", "DECIMAL(4,0)", "DATE", "BOOLEAN"]


def family_conversion(draw: st.DrawFn, style: Style) -> Analysis:
    """Expressions that make DuckDB convert values (narrow casts, mismatched
    comparisons, overflow): their errors name the value that failed, which
    may belong to a suppressed group."""
    frame = draw(frames(draw(st.sampled_from(["t", "c", "tc"]))))
    strings = [frame.col("t", "category")] if frame.t is not None else []
    strings += [frame.col("c", n) for n in ("segment", "region")] if frame.c is not None else []
    narrow = st.sampled_from(NARROW_TYPES)
    where_ = draw(st.sampled_from(["measure", "key", "where", "having"]))
    if where_ == "key":
        column, to = draw(st.sampled_from(strings)), draw(narrow)
        s = draw(scope(frame, keys=[(Cast(column, to), "converted")], where=None, order=False))
        # groups as DuckDB can form them: a failed conversion is NULL, not an error
        groups = frame.groups(None, [(Cast(column, to, tried=True), "converted")])
        return Analysis("conversion/key", s.select.sql(style), ("converted",), (groups,))
    s = draw(scope(frame, max_keys=1, where=None, order=False))
    keys = tuple(n for _, n in s.keys)
    values = [e for e, n in measures(frame) if n in ("total", "mean", "mean_age", "n", "last_at")]
    value = draw(st.sampled_from(values))
    if where_ == "measure":
        form = draw(st.integers(0, 3))
        if form == 0:
            expr: Expr = Cast(value, draw(narrow))
        elif form == 1:
            expr = Cast(Cast(value, "VARCHAR"), draw(narrow))
        elif form == 2:
            expr = Op("*", value, Lit(10**30))
        else:
            expr = Op("/", Lit(1), Op("-", Agg("COUNT"), Lit(draw(st.integers(1, 4)))))
        select = replace(s.select, items=(*s.select.items, (expr, "converted")))
    elif where_ == "having":
        select = replace(s.select, having=Op(">", Cast(value, draw(narrow)), Lit(0)))
    else:
        column = draw(st.sampled_from(strings))
        condition = draw(
            st.sampled_from(
                [
                    Op("=", column, Lit(1)),
                    Op(">", column, Lit(5)),
                    Op("=", Cast(column, draw(narrow)), Lit(1)),
                    *([Op("=", frame.col("t", "ts"), Lit("yacht"))] if frame.t is not None else []),
                    *(
                        [Op("=", frame.col("c", "opted_in"), Lit("maybe"))]
                        if frame.c is not None
                        else []
                    ),
                ]
            )
        )
        select = replace(s.select, where=condition)
        s = replace(s, select=select)
    return Analysis(f"conversion/{where_}", select.sql(style), keys, (s.groups(),))


FAMILIES: list[tuple[int, Family]] = [
    (24, family_aggregate),
    (18, family_nested),
    (12, family_differencing),
    (6, family_dimension_join),
    (6, family_literal_join),
    (6, family_pinning),
    (6, family_rows),
    (14, family_template),
    (4, family_functions),
    (6, family_conversion),
]
_WEIGHTED = [f for weight, f in FAMILIES for _ in range(weight)]

styles = st.builds(
    Style,
    st.sampled_from(["plain"] * 6 + ["upper", "title", "quoted", "quoted_upper", "quoted_title"]),
    st.sampled_from(["upper", "upper", "lower"]),
)


@st.composite
def cases(draw: st.DrawFn) -> Analysis:
    family = draw(st.sampled_from(_WEIGHTED))
    return family(draw, draw(styles))


# -- running a case ----------------------------------------------------------------------

_ENGINE: list[Engine] = []


def engine() -> Engine:
    if not _ENGINE:
        _ENGINE.append(Engine())
    return _ENGINE[0]


def event(text: str) -> None:
    """Hypothesis statistics (``--hypothesis-show-statistics``), inside a test only."""
    if currently_in_test_context():
        _event(text)


def note(text: str) -> None:
    if currently_in_test_context():
        _note(text)


def judge(case: Analysis, room_seed: int | None) -> list[str]:
    """Check ``case``; run accepted SQL through the oracles on the room of
    ``room_seed`` (the reference room when None). Returns failures."""
    try:
        checked = check_query(case.sql, SOURCES)
    except PolicyError:
        event(f"refused: {case.family.split('/')[0]}")
        return []
    except Exception as exc:  # noqa: BLE001 -- any other exception is the finding
        return [f"checker crashed with {type(exc).__name__}: {exc}"]
    event(f"accepted: {case.family.split('/')[0]} (intent: {case.intent})")
    note(f"room seed: {room_seed}\nchecked SQL: {checked.sql}")
    room = random_room(room_seed) if room_seed is not None else reference_room()
    return [str(v) for v in _oracles_on(case, checked.sql, room)]


def _oracles_on(case: Analysis, sql: str, room: Room) -> list[Violation]:
    db = engine()
    db.load(room)
    try:
        db.run(sql)
    except duckdb.Error as exc:
        event(f"accepted SQL failed in DuckDB: {type(exc).__name__}")
        note(f"DuckDB error: {exc}")
        return error_message(room, case.sql, str(exc))
    try:
        return examine(db, sql, keys=case.keys, groups=case.groups, k=expected_k(case.sql, SOURCES))
    except duckdb.Error as exc:  # only on perturbed data: values far out of range
        event(f"accepted SQL failed in DuckDB on perturbed data: {type(exc).__name__}")
        note(f"DuckDB error on perturbed data: {exc}")
    except UnstableOutputError:
        event("accepted SQL is nondeterministic: influence not measured")
    except OracleQueryError as exc:
        event("the suppression oracle could not recount groups")
        note(str(exc))
    return []


def _report(case: Analysis, failures: list[str]) -> str:
    shown = "\n  ".join(failures[:6])
    more = f"\n  ... and {len(failures) - 6} more" if len(failures) > 6 else ""
    return f"{case.family} (expected {case.intent}):\n{case.sql}\n  {shown}{more}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": seconds, no news
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(), room_seed=st.integers(0, 2**32 - 1))
def test_fuzzed_queries_are_refused_or_do_not_leak(case: Analysis, room_seed: int) -> None:
    failures = judge(case, room_seed)
    assert not failures, _report(case, failures)


# -- regression vectors -----------------------------------------------------------------


def _vectors() -> list[Path]:
    return sorted(VECTORS.glob("*.json"))


def test_vectors_exist() -> None:
    assert len(_vectors()) >= 20


@pytest.mark.parametrize("path", _vectors(), ids=lambda p: p.stem)
def test_regression_vector(path: Path) -> None:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert vector["expected"] in ("refused", "allowed"), path
    if vector["expected"] == "refused":
        with pytest.raises(PolicyError):
            check_query(vector["sql"], SOURCES)
        return
    case = Analysis(path.stem, vector["sql"], tuple(vector.get("keys", ())), (), "allowed")
    failures = judge(case, None)
    assert not failures, _report(case, failures)


# -- the oracles catch what they are meant to -------------------------------------------

DIFFERENCING = (
    "WITH everyone AS (SELECT SUM(amount) s FROM transactions), "
    "others AS (SELECT SUM(t.amount) s FROM transactions t LEFT JOIN (SELECT 'c7' AS id) v "
    "ON t.customer_hash = v.id WHERE v.id IS NULL) "
    "SELECT everyone.s - others.s AS d FROM everyone, others"
)
SIDE_BY_SIDE = (
    "WITH everyone AS (SELECT AVG(amount) s FROM transactions), "
    "others AS (SELECT AVG(amount) s FROM transactions WHERE category <> 'yacht') "
    "SELECT everyone.s AS s_all, others.s AS s_rest FROM everyone, others"
)
BY_IDENTITY = "SELECT customer_hash, SUM(amount) AS s FROM transactions GROUP BY customer_hash"
THRESHOLDED = (
    "SELECT c.segment, SUM(t.amount) AS spend, AVG(t.amount) AS mean, AVG(c.age) AS age, "
    "COUNT(*) AS n FROM transactions t JOIN customers c ON t.customer_hash = c.customer_hash "
    "GROUP BY c.segment HAVING COUNT(DISTINCT t.customer_hash) >= 3"
)


@pytest.fixture
def reference() -> Engine:
    db = engine()
    db.load(reference_room())
    return db


def _oracles(
    db: Engine, sql: str, keys: Sequence[str], groups: Sequence[Groups]
) -> list[Violation]:
    return examine(db, sql, keys=keys, groups=groups, k=expected_k(sql, SOURCES))


def test_influence_flags_differencing(reference: Engine) -> None:
    found = _oracles(reference, DIFFERENCING, (), ())
    assert [v.oracle for v in found] == ["influence"], found
    assert "['c7']" in found[0].detail


def test_differencing_flags_two_cells_that_cancel(reference: Engine) -> None:
    found = _oracles(reference, SIDE_BY_SIDE, (), ())
    assert [v.oracle for v in found] == ["differencing"], found
    assert "['c7']" in found[0].detail


def test_differencing_flags_two_rows_that_cancel(reference: Engine) -> None:
    union = (
        "SELECT 'all' AS g, SUM(amount) AS s FROM transactions UNION ALL "
        "SELECT 'rest', SUM(amount) FROM transactions WHERE category <> 'yacht'"
    )
    assert [v.oracle for v in _oracles(reference, union, ("g",), ())] == ["differencing"]


def test_suppression_flags_groups_of_one(reference: Engine) -> None:
    groups = Groups("transactions", None, (("customer_hash", "customer_hash"),), ("customer_hash",))
    result = reference.run(BY_IDENTITY)
    found = suppression(reference, result, [groups], 3)
    assert len(found) == len(result.rows) == 12
    assert influence(reference, BY_IDENTITY, ("customer_hash",), 3)


def test_suppression_flags_a_row_that_is_no_group(reference: Engine) -> None:
    groups = Groups("transactions", None, (("category", "category"),), ("customer_hash",))
    result = reference.run("SELECT 'made up' AS category, COUNT(*) AS n FROM transactions")
    assert [v.oracle for v in suppression(reference, result, [groups], 3)] == ["suppression"]


def test_shape_flags_lists_of_values(reference: Engine) -> None:
    assert [v.oracle for v in shape(reference.run("SELECT MAX(ts, 3) AS m FROM transactions"))] == [
        "shape"
    ]


def test_error_flags_a_message_that_quotes_data(reference: Engine) -> None:
    sql = "SELECT category, CAST(SUM(amount) AS SMALLINT) AS s FROM transactions GROUP BY 1"
    with pytest.raises(duckdb.Error) as caught:
        reference.run(sql)
    found = error_message(reference_room(), sql, str(caught.value))
    assert [v.oracle for v in found] == ["error"]
    assert "99999" in found[0].detail  # the yacht buyer's purchase


def test_a_thresholded_query_passes_every_oracle(reference: Engine) -> None:
    groups = Groups(
        "transactions t JOIN customers c ON t.customer_hash = c.customer_hash",
        None,
        (("c.segment", "segment"),),
        ("t.customer_hash", "c.customer_hash"),
    )
    assert reference.run(THRESHOLDED).rows  # a, b, c survive; vip (c7 alone) does not
    assert _oracles(reference, THRESHOLDED, ("segment",), (groups,)) == []


def test_the_threshold_is_decided_from_the_rules() -> None:
    assert expected_k("SELECT COUNT(*) FROM customers", SOURCES) == 2
    assert expected_k(THRESHOLDED, SOURCES) == 3
    assert expected_k("SELECT year(ts), COUNT(*) FROM transactions GROUP BY 1", SOURCES) == 4


def test_generated_rooms_are_deterministic_and_varied() -> None:
    assert random_room(7) == random_room(7)
    sizes = {len(random_room(seed).persons) for seed in range(30)}
    assert min(sizes) >= 8
    assert len(sizes) > 3
