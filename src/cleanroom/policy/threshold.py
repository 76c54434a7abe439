"""Thresholds enforced inside the query's own DuckDB plan, exactly and cheaply.

A threshold keeps a group only if at least ``k`` distinct identities stand
behind it. Counting them exactly (``COUNT(DISTINCT identity)``) puts every
(group, identity) pair in a hash table, which costs more than a cheap
aggregate itself. Most groups, though, are far above ``k`` and need no exact
count, only a proof that they are above it; a few are far below it and need
no count either. So the rewrite computes, in the same aggregation pass:

- a *lower bound*: the identities' values are spread over 64 buckets (the
  low six bits of an integer identity, of its hash otherwise) and a 64-bit
  bitmap records which buckets occur; two identities in different buckets
  are different identities, so the number of set bits never exceeds the
  number of distinct identities (a NULL identity, whose hash is not NULL,
  can set one bit: it is taken off when NULLs occur);
- an *upper bound*: the number of rows.

A group whose lower bound reaches ``k`` is kept, one whose upper bound is
below ``k`` is suppressed, and only the groups in between are counted
exactly, by a second aggregation restricted to those groups' rows (a semi
join on the group keys, which DuckDB skips when there are none). The result
is exactly what ``HAVING COUNT(DISTINCT identity) >= k`` gives; the tests
compare both on the policy table and on data made to defeat the bounds.

Where the rewrite would not be exact (samples, windows, subqueries or derived
tables whose rows could differ between the two passes, grouping sets), where
the query already counts the identities, or where ``k`` exceeds what a 64-bit
bitmap can prove, the threshold is the plain ``HAVING`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

DIALECT = "duckdb"
BITMAP_BITS = 64
# clauses a SELECT may have for the bounded rewrite; anything else takes the plain HAVING
_PLAIN_CLAUSES = frozenset(
    {
        "with_",
        "expressions",
        "from_",
        "joins",
        "where",
        "group",
        "having",
        "order",
        "limit",
        "offset",
    }
)
# the number of buckets (of 64) that the group's identities fall in; x is the identity
_BUCKETS = sqlglot.parse_one(
    "BIT_COUNT(BIT_OR(CAST(1 AS UBIGINT) << CAST(x & 63 AS UTINYINT)))", dialect=DIALECT
)
_HASHED_BUCKETS = sqlglot.parse_one(
    "BIT_COUNT(BIT_OR(CAST(1 AS UBIGINT) << CAST(HASH(x) & 63 AS UTINYINT)))"
    " - CASE WHEN COUNT(*) > COUNT(x) THEN 1 ELSE 0 END",
    dialect=DIALECT,
)


@dataclass(frozen=True)
class Identity:
    """An identity column to count in one SELECT: qualified, and whether it
    is an integer (its low bits are the bucket) or not (its hash is)."""

    column: exp.Column
    integer: bool
    counted: bool = False  # the SELECT already computes COUNT(DISTINCT column)


def count_distinct(column: exp.Column) -> exp.Count:
    return exp.Count(this=exp.Distinct(expressions=[column.copy()]))


def enforce(
    select: exp.Select,
    identities: list[Identity],
    k: int,
    *,
    tag: str,
    inputs: set[str],
    bounded: bool = True,
) -> exp.Select:
    """The SELECT to run in place of ``select`` so that only groups with at
    least ``k`` distinct values of every identity remain. ``inputs`` are the
    names of the query's input tables (anything else it reads is a CTE);
    ``tag`` makes the names of the helper CTEs unique within the query;
    ``bounded=False`` counts every group exactly (same result, slower: for
    comparison). ``select`` itself may be changed (a plain HAVING) and
    returned."""
    plain = bounded and k <= BITMAP_BITS and _plain(select, inputs)
    rest = []
    for identity in identities:
        if identity.counted or not plain:
            # free when the query counts it anyway: DuckDB computes the aggregate once
            select.having(_at_least(count_distinct(identity.column), k), copy=False)
        else:
            rest.append(identity)
    return _bounded(select, rest, k, tag) if rest else select


def _plain(select: exp.Select, inputs: set[str]) -> bool:
    """Whether two evaluations of this SELECT's FROM and WHERE surely see the
    same rows: input tables only (a CTE could be evaluated twice, differently),
    no samples, windows or subqueries, plain GROUP BY."""
    if any(value for key, value in select.args.items() if key not in _PLAIN_CLAUSES and value):
        return False
    source = select.args.get("from_")
    joins = select.args.get("joins") or []
    if source is None or any(j.args.get("using") or j.method for j in joins):
        return False
    for node in [source.this, *(j.this for j in joins)]:
        if not isinstance(node, exp.Table) or node.name not in inputs or node.args.get("sample"):
            return False
    group = select.args.get("group")
    if group is not None and (
        any(value for key, value in group.args.items() if key != "expressions" and value)
        or any(isinstance(g, (exp.Rollup, exp.Cube, exp.GroupingSets)) for g in group.expressions)
    ):
        return False
    body = [select.args.get(key) for key in ("expressions", "from_", "joins", "where", "group")]
    body += [select.args.get("having"), select.args.get("order")]
    for part in body:
        for node in part if isinstance(part, list) else [part]:
            if node is not None and (
                node.find(exp.Window, exp.Subquery, exp.TableSample)
                or any(inner is not node for inner in node.find_all(exp.Select))
            ):
                return False
    return True


def _at_least(value: exp.Expr, k: int) -> exp.GTE:
    return exp.GTE(this=value, expression=exp.Literal.number(k))


def _all(conditions: Sequence[exp.Expr]) -> exp.Expr:
    return exp.and_(*conditions, copy=False) if conditions else exp.true()


def _same(left: exp.Expr, right: exp.Expr) -> exp.Expr:
    return exp.NullSafeEQ(this=left, expression=right)


def _lower_bound(identity: Identity) -> exp.Expr:
    # integer arithmetic maps NULL to no bucket; HASH(NULL) is a value: one bit is taken off
    template = _BUCKETS if identity.integer else _HASHED_BUCKETS
    return template.transform(
        lambda node: identity.column.copy() if isinstance(node, exp.Column) else node
    )


def _unalias(node: exp.Expr, projections: list[exp.Expr]) -> exp.Expr:
    """``node`` with references to the SELECT's output names replaced by what they name."""
    if isinstance(node, exp.Literal) and node.is_int:  # ORDER BY 2
        return projections[int(node.name) - 1].unalias().copy()
    named: dict[str, exp.Expr] = {}
    for projection in projections:  # the first of two equal names, as DuckDB resolves it
        named.setdefault(projection.alias_or_name, projection.unalias())

    def swap(part: exp.Expr) -> exp.Expr:
        if isinstance(part, exp.Column) and not part.table and part.name in named:
            return named[part.name].copy()
        return part

    return node.transform(swap)  # transform copies


def _select(columns: list[exp.Expr], source: str) -> exp.Select:
    return exp.Select(expressions=columns, from_=exp.From(this=exp.to_table(source)))


def _with_columns(select: exp.Select, extra: list[tuple[str, exp.Expr]]) -> exp.Select:
    """A copy of ``select`` without its CTEs, sorting and limits (the final
    query does those), with ``extra`` columns at the end."""
    moved = {c: select.args.get(c) for c in ("with_", "order", "limit", "offset")}
    for clause in moved:  # detached while copying: a CTE can be large
        select.set(clause, None)
    inner = select.copy()
    for clause, value in moved.items():
        select.set(clause, value)
    for name, node in extra:
        inner.append("expressions", exp.alias_(node, f"__cleanroom_{name}", copy=False))
    return inner


def _exact(
    select: exp.Select, keys: list[exp.Expr], identities: list[Identity], k: int, undecided: str
) -> exp.Select:
    """The undecided groups that pass, counted exactly over their own rows only
    (a semi join on the group keys: no rows at all when none is undecided)."""
    exact = exp.Select(
        expressions=[exp.alias_(key.copy(), f"g{j}", copy=False) for j, key in enumerate(keys)]
        or [exp.alias_("1", "g0")],
        from_=select.args["from_"].copy(),
        joins=[join.copy() for join in select.args.get("joins") or []],
    )
    on = _all([_same(key.copy(), exp.column(f"g{j}", undecided)) for j, key in enumerate(keys)])
    exact.append("joins", exp.Join(this=exp.to_table(undecided), on=on, kind="SEMI"))
    # the same test key by key: implied by the join above, but DuckDB pushes each one down
    # to its table's scan, so no join builds a hash table when no group is undecided
    conditions = [select.args["where"].this.copy()] if select.args.get("where") else []
    for j, key in enumerate(keys):
        match = (
            exp.select("1")
            .from_(undecided)
            .where(_same(exp.column(f"g{j}", undecided), key.copy()), copy=False)
        )
        conditions.append(exp.Exists(this=match))
    if conditions:
        exact.set("where", exp.Where(this=_all(conditions)))
    if keys:
        exact.set("group", exp.Group(expressions=[key.copy() for key in keys]))
    counts = [_at_least(count_distinct(identity.column), k) for identity in identities]
    exact.set("having", exp.Having(this=_all(counts)))
    return exact


def _bounded(select: exp.Select, identities: list[Identity], k: int, tag: str) -> exp.Select:
    q, u, e = (f"__cleanroom_{tag}_{part}" for part in ("q", "u", "e"))
    outputs = [p.alias_or_name for p in select.expressions]
    group = select.args.get("group")
    keys: list[exp.Expr] = list(group.expressions) if group is not None else []
    order = select.args.get("order")
    ordered: list[exp.Ordered] = list(order.expressions) if order is not None else []

    # q: the query itself, with its group keys, both bounds and its sort keys as extra columns
    extra: list[tuple[str, exp.Expr]] = [(f"g{j}", key.copy()) for j, key in enumerate(keys)]
    for r, identity in enumerate(identities):
        extra.append((f"low{r}", _lower_bound(identity)))
        extra.append((f"high{r}", exp.Count(this=exp.Star())))
    extra += [(f"o{m}", _unalias(item.this, select.expressions)) for m, item in enumerate(ordered)]
    inner = _with_columns(select, extra)
    columns = [f"c{i}" for i in range(len(outputs))] + [name for name, _ in extra]
    group_columns = [f"g{j}" for j in range(len(keys))]

    def proven() -> exp.Expr:
        return _all([_at_least(exp.column(f"low{r}", q), k) for r in range(len(identities))])

    possible = _all([_at_least(exp.column(f"high{r}", q), k) for r in range(len(identities))])
    # u: the groups in between, neither proven nor impossible
    undecided = _select([exp.column(c, q) for c in group_columns] or [exp.alias_("1", "g0")], q)
    undecided.set("where", exp.Where(this=_all([exp.not_(proven(), copy=False), possible])))
    exact = _exact(select, keys, identities, k, u)
    passed = _select([exp.Literal.number(1)], e)
    passed.set(
        "where",
        exp.Where(this=_all([_same(exp.column(c, e), exp.column(c, q)) for c in group_columns])),
    )
    final = _select(
        [exp.alias_(exp.column(f"c{i}", q), name, quoted=True) for i, name in enumerate(outputs)],
        q,
    )
    final.set("where", exp.Where(this=exp.or_(proven(), exp.Exists(this=passed), copy=False)))
    if ordered:
        keys_out = []
        for m, item in enumerate(ordered):
            key = item.copy()
            key.set("this", exp.column(f"o{m}", q))
            keys_out.append(key)
        final.set("order", exp.Order(expressions=keys_out))
    for clause in ("limit", "offset"):
        if select.args.get(clause) is not None:
            final.set(clause, select.args[clause].copy())
    alias = exp.TableAlias(
        this=exp.to_identifier(q), columns=[exp.to_identifier(c) for c in columns]
    )
    ctes = [
        exp.CTE(this=inner, alias=alias, materialized=True),
        exp.CTE(this=undecided, alias=exp.TableAlias(this=exp.to_identifier(u))),
        exp.CTE(this=exact, alias=exp.TableAlias(this=exp.to_identifier(e))),
    ]
    existing = select.args.get("with_")
    if existing is None:
        final.set("with_", exp.With(expressions=ctes))
    else:  # the query's own CTEs come first: the rewritten SELECT may read them
        existing.set("expressions", [*existing.expressions, *ctes])
        final.set("with_", existing)
    return final
