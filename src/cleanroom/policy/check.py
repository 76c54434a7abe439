"""The static check of an analysis against its inputs' rules, and the rewrite
that enforces thresholds inside the same DuckDB plan.

Pure: SQL text and the inputs' schemas and rules in, the SQL to run (or a
:class:`PolicyError` naming the offending expression and the rule it breaks)
out. The service runs it when an analysis is proposed; the enclave runs it
again before execution, on rules it read from the verified ledger, and runs
only the SQL it returns.

Under aggregation rules, every SELECT that reads a protected table directly
must aggregate: its columns outside aggregates must be dimensions, aggregate
arguments must be plain columns the rule allows for that function, joins must
be equalities of declared join columns, and functions must be in the rules'
allow-lists. Thresholds keep only the groups of every such SELECT that have
at least ``k`` distinct identities (``cleanroom.policy.threshold`` rewrites
the SELECT so that DuckDB proves most groups cheaply and counts the rest
exactly), so groups below the minimum never leave it. Window
functions, set operations, subqueries in expressions, table functions and
anything not recognised are refused: when in doubt, refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from cleanroom.datasets.schema import Schema
from cleanroom.errors import GovernanceError
from cleanroom.policy import threshold
from cleanroom.policy.rules import AggregationRule, CustomRule, DpSpec, ListRule

Rule = AggregationRule | ListRule | CustomRule
DIALECT = "duckdb"

_SCALARS: dict[type[exp.Expr], str] = {
    exp.Abs: "abs",
    exp.Ceil: "ceil",
    exp.DateTrunc: "date_trunc",
    exp.TimestampTrunc: "date_trunc",
    exp.Extract: "extract",
    exp.Floor: "floor",
    exp.Greatest: "greatest",
    exp.Least: "least",
    exp.Lower: "lower",
    exp.Month: "month",
    exp.Round: "round",
    exp.Upper: "upper",
    exp.Year: "year",
}
# conditionals, casts and AND/OR (which sqlglot models as functions): they only
# rearrange or combine what the columns inside them may show
_STRUCTURAL = (exp.Case, exp.If, exp.Coalesce, exp.Cast, exp.TryCast, exp.Connector)
_AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
}
# casts that turn a value into bytes or a container (which other functions can take apart)
_CAST_REFUSED = frozenset(
    {
        exp.DataType.Type.BINARY,
        exp.DataType.Type.VARBINARY,
        exp.DataType.Type.BLOB,
        exp.DataType.Type.JSON,
        exp.DataType.Type.BIT,
        exp.DataType.Type.STRUCT,
        exp.DataType.Type.ARRAY,
        exp.DataType.Type.LIST,
        exp.DataType.Type.MAP,
        exp.DataType.Type.UNION,
    }
)


class PolicyError(GovernanceError):
    """An analysis that its inputs' rules do not allow; the message names the
    expression and the rule."""


@dataclass(frozen=True)
class Source:
    """An input as the checker sees it: schema, rule, and whether its owner
    approved this analysis's exact text (what a custom rule requires)."""

    name: str
    schema: Schema
    rule: Rule | None
    owner_approved: bool = False

    @property
    def protected(self) -> bool:
        return isinstance(self.rule, (AggregationRule, ListRule))


@dataclass(frozen=True)
class Checked:
    sql: str
    mode: str  # "aggregation" | "list" | "custom"
    threshold: int
    columns: list[str] = field(default_factory=list)


def _sql(node: exp.Expr) -> str:
    text = node.sql(dialect=DIALECT)
    return text if len(text) <= 120 else text[:117] + "..."


def parse(text: str, sources: dict[str, Source]) -> exp.Query:
    """Parse and qualify ``text`` (one query over ``sources``), or raise."""
    try:
        statements = sqlglot.parse(text, dialect=DIALECT)
    except SqlglotError as exc:
        raise PolicyError(f"the analysis is not valid SQL: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise PolicyError("an analysis is exactly one SELECT query")
    query = statements[0]
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    for table in query.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise PolicyError(f"table functions are not allowed: {_sql(table)}")
        if table.name not in sources and table.name not in ctes:
            raise PolicyError(f"{table.name!r} is not an input of this analysis")
    for node in query.find_all(exp.Func):
        if isinstance(node, (exp.ReadCSV, exp.ReadParquet)):
            raise PolicyError(f"reading files is not allowed: {_sql(node)}")
    # column names are what resolution needs; types do not change any check
    schema: dict[str, object] = {
        name: dict.fromkeys(s.schema.names, "VARCHAR") for name, s in sources.items()
    }
    try:
        qualified = qualify(
            query,
            schema=schema,
            dialect=DIALECT,
            validate_qualify_columns=True,
        )
    except (OptimizeError, SqlglotError) as exc:
        raise PolicyError(f"the analysis does not resolve: {str(exc).splitlines()[0]}") from exc
    if not isinstance(qualified, exp.Query):
        raise PolicyError("an analysis is exactly one SELECT query")
    return qualified


class _Checker:
    def __init__(self, sources: dict[str, Source], *, bounded: bool = True) -> None:
        self.sources = sources
        self.bounded = bounded
        kinds = {type(s.rule) for s in sources.values() if s.protected}
        if AggregationRule in kinds and ListRule in kinds:
            raise PolicyError(
                "datasets under aggregation rules and under list rules cannot meet in one query"
            )
        self.mode = (
            "aggregation" if AggregationRule in kinds else "list" if ListRule in kinds else "custom"
        )
        for source in sources.values():
            if not source.protected and not source.owner_approved:
                raise PolicyError(
                    f"{source.name!r} has a custom rule: its owner must approve this exact query"
                )
        # strictest wins: a function must be allowed by every protected rule queried
        allowed = [
            set(s.rule.scalar_functions)
            for s in sources.values()
            if isinstance(s.rule, (AggregationRule, ListRule))
        ]
        self.functions: set[str] = set.intersection(*allowed) if allowed else set()
        # SELECTs that get a threshold, with the identities to count, rewritten at the end
        self.thresholds: list[tuple[exp.Select, list[threshold.Identity], int]] = []

    # -- helpers ---------------------------------------------------------------------

    def table_of(self, scope: Scope, column: exp.Column) -> Source | None:
        return self.table_of_source(scope.sources.get(column.table))

    def threshold(self, query: exp.Query) -> int:
        referenced = {c.name for c in query.find_all(exp.Column)}
        k = 0
        for source in self.sources.values():
            rule = source.rule
            if isinstance(rule, AggregationRule):
                k = max(k, rule.min_distinct)
                k = max([k, *(v for c, v in rule.column_thresholds.items() if c in referenced)])
            elif isinstance(rule, CustomRule) and rule.min_distinct:
                k = max(k, rule.min_distinct)
        return k

    # -- checks ----------------------------------------------------------------------

    def check(self, query: exp.Query) -> Checked:
        if self.mode != "custom":
            if isinstance(query, exp.SetOperation) or query.find(exp.SetOperation):
                raise PolicyError(
                    f"set operations (UNION, INTERSECT, EXCEPT) can single out rows: {_sql(query)}"
                )
            window = query.find(exp.Window)
            if window is not None:
                raise PolicyError(f"window functions return row values: {_sql(window)}")
        k = self.threshold(query)
        for scope in traverse_scope(query):
            tables = [self.table_of_source(s) for s in scope.sources.values()]
            reads = [t for t in tables if t is not None]
            if self.mode != "custom" and scope.is_subquery:
                raise PolicyError(
                    f"subqueries in expressions are not allowed: {_sql(scope.expression)}"
                )
            if not reads:
                continue
            if any(t.protected for t in reads):
                if self.mode == "aggregation":
                    self.aggregation_scope(scope, k)
                else:
                    self.list_scope(scope)
            elif k and any(isinstance(t.rule, CustomRule) and t.rule.min_distinct for t in reads):
                self.require_aggregate(scope, "a custom rule with a threshold")
                self.add_threshold(scope, k)
        self.disallowed_outputs(query)
        columns = [p.alias_or_name for p in query.selects]
        query = self.enforce_thresholds(query)
        return Checked(query.sql(dialect=DIALECT), self.mode, k, columns)

    def enforce_thresholds(self, query: exp.Query) -> exp.Query:
        """Rewrite every SELECT that got a threshold (inner ones first); returns
        the query, which may itself have been replaced."""
        # a CTE named like an input hides it: such a name is never taken for an input
        inputs = set(self.sources) - {cte.alias_or_name for cte in query.find_all(exp.CTE)}
        for n, (select, identities, k) in enumerate(self.thresholds):
            enforced = threshold.enforce(
                select, identities, k, tag=f"t{n}", inputs=inputs, bounded=self.bounded
            )
            if select is query:
                query = enforced
            elif enforced is not select:
                select.replace(enforced)
        return query

    def table_of_source(self, source: Any) -> Source | None:
        if isinstance(source, exp.Table) and source.name in self.sources:
            return self.sources[source.name]
        return None

    def require_aggregate(self, scope: Scope, what: str) -> None:
        select = scope.expression
        if not isinstance(select, exp.Select):
            raise PolicyError(f"{what} needs a plain SELECT: {_sql(select)}")
        aggregates = [a for p in select.expressions for a in p.find_all(exp.AggFunc)]
        if not select.args.get("group") and not aggregates:
            raise PolicyError(
                f"{what}: every SELECT over protected data must aggregate; this one emits "
                f"rows: {_sql(select)}"
            )

    def add_threshold(self, scope: Scope, k: int) -> None:
        select = scope.expression
        if not isinstance(select, exp.Select):
            raise PolicyError(f"a threshold needs a plain SELECT: {_sql(select)}")
        counted: list[tuple[str, str]] = []
        identities: list[threshold.Identity] = []
        equal = _inner_equalities(select)
        already = _distinct_counts(select)
        for alias, source in scope.sources.items():
            table = self.table_of_source(source)
            if table is None:
                continue
            column = (alias, table.schema.identity_column)
            # an inner join on two identity columns makes their distinct counts equal:
            # count one of them (distinct counting is the threshold's whole cost)
            if any(_linked(column, other, equal) for other in counted):
                continue
            counted.append(column)
            # a distinct count the query computes anyway, of this identity or an equal one
            same = [c for c in already if c == column or _linked(column, c, equal)]
            table_alias, name = same[0] if same else column
            identities.append(
                threshold.Identity(
                    column=exp.column(name, table=table_alias, quoted=True),
                    integer=table.schema.column(column[1]).type in ("int32", "int64"),
                    counted=bool(same),
                )
            )
        self.thresholds.append((select, identities, k))

    def joins(self, scope: Scope) -> None:
        select = scope.expression
        for join in select.args.get("joins") or []:
            if join.args.get("using"):
                raise PolicyError(f"write join conditions with ON: {_sql(join)}")
            condition = join.args.get("on")
            if condition is None or join.args.get("kind") == "CROSS" or join.method:
                raise PolicyError(f"cross and natural joins are not allowed: {_sql(join)}")
            for part in _conjuncts(condition):
                if not (
                    isinstance(part, exp.EQ)
                    and isinstance(part.this, exp.Column)
                    and isinstance(part.expression, exp.Column)
                ):
                    raise PolicyError(
                        f"join conditions must be equalities of join columns: {_sql(part)}"
                    )
                for column in (part.this, part.expression):
                    table = self.table_of(scope, column)
                    rule = table.rule if table else None
                    if (
                        table is not None
                        and isinstance(rule, (AggregationRule, ListRule))
                        and column.name not in rule.join_columns
                    ):
                        raise PolicyError(
                            f"join on {column.name!r}, which is not a declared join column of "
                            f"{table.name!r} ({rule.type} rule): {_sql(part)}"
                        )

    def functions_in(self, node: exp.Expr) -> None:
        for function in node.find_all(exp.Func):
            if isinstance(function, (exp.AggFunc, *_STRUCTURAL)):
                if isinstance(function, (exp.Cast, exp.TryCast)):
                    target = function.to.this
                    if target in _CAST_REFUSED:
                        raise PolicyError(
                            f"casts to {target.name} are not allowed: {_sql(function)}"
                        )
                continue
            name = _SCALARS.get(type(function))
            if name is None or name not in self.functions:
                label = (
                    function.sql_name()
                    if not isinstance(function, exp.Anonymous)
                    else function.name
                )
                raise PolicyError(
                    f"function {label.lower()} is not allowed by the rules of the datasets "
                    f"queried (allowed: {', '.join(sorted(self.functions)) or 'none'}): "
                    f"{_sql(function)}"
                )

    def aggregation_scope(self, scope: Scope, k: int) -> None:
        select = scope.expression
        if not isinstance(select, exp.Select):
            raise PolicyError(f"only plain SELECTs may read protected data: {_sql(select)}")
        if select.args.get("distinct"):
            raise PolicyError(f"SELECT DISTINCT emits rows; use GROUP BY: {_sql(select)}")
        for node in _clause_nodes(select, ("expressions", "where", "group", "having", "order")):
            self.functions_in(node)
        self.require_aggregate(scope, "aggregation rule")
        self.joins(scope)
        for aggregate in select.find_all(exp.AggFunc):
            self.aggregate(scope, aggregate)
        for column in scope.columns:
            table = self.table_of(scope, column)
            if table is None or not isinstance(table.rule, AggregationRule):
                continue
            if _inside(column, (exp.AggFunc,), select) or _in_join(column, select):
                continue
            self.dimension(table, table.rule, column)
        if k:
            self.add_threshold(scope, k)

    def aggregate(self, scope: Scope, aggregate: exp.AggFunc) -> None:
        if isinstance(aggregate, exp.Count):
            argument = aggregate.this
            if isinstance(argument, exp.Star):
                return
            name = "count"
            if isinstance(argument, exp.Distinct):
                name = "count_distinct"
                argument = argument.expressions[0] if len(argument.expressions) == 1 else None
        elif type(aggregate) in _AGGREGATES:
            name = _AGGREGATES[type(aggregate)]
            argument = aggregate.this
            if isinstance(argument, exp.Distinct):
                raise PolicyError(f"DISTINCT is allowed in COUNT only: {_sql(aggregate)}")
        else:
            raise PolicyError(
                f"aggregate {aggregate.sql_name().lower()} is not allowed: it can return a "
                f"row's value: {_sql(aggregate)}"
            )
        if not isinstance(argument, exp.Column):
            raise PolicyError(
                f"the argument of {name} must be a plain column (expressions can smuggle a "
                f"row's value into an aggregate): {_sql(aggregate)}"
            )
        table = self.table_of(scope, argument)
        if table is None or not isinstance(table.rule, AggregationRule):
            return
        if not table.rule.allows(name, argument.name):
            raise PolicyError(
                f"{name} on {table.name}.{argument.name} is not allowed by its aggregation "
                f"rule: {_sql(aggregate)}"
            )

    def dimension(self, table: Source, rule: AggregationRule, column: exp.Column) -> None:
        name = column.name
        if name in rule.dimensions:
            return
        if name == table.schema.identity_column:
            raise PolicyError(
                f"the identity column {table.name}.{name} may appear only inside "
                f"COUNT(DISTINCT ...) or a join condition: {_sql(column.parent or column)}"
            )
        if name in rule.join_columns:
            raise PolicyError(
                f"join column {table.name}.{name} may be used only in join conditions: "
                f"{_sql(column.parent or column)}"
            )
        raise PolicyError(
            f"{table.name}.{name} is not a dimension of its aggregation rule: it may appear "
            f"only inside an allowed aggregate: {_sql(column.parent or column)}"
        )

    def list_scope(self, scope: Scope) -> None:
        select = scope.expression
        if not isinstance(select, exp.Select):
            raise PolicyError(f"only plain SELECTs may read protected data: {_sql(select)}")
        aggregate = select.find(exp.AggFunc)
        if aggregate is not None or select.args.get("group") or select.args.get("having"):
            raise PolicyError(f"list rules output rows, not aggregates: {_sql(select)}")
        self.joins(scope)
        for column in scope.columns:
            table = self.table_of(scope, column)
            if table is None or not isinstance(table.rule, ListRule) or _in_join(column, select):
                continue
            if column.name not in table.rule.list_columns:
                raise PolicyError(
                    f"{table.name}.{column.name} is not a list column of its list rule: "
                    f"{_sql(column.parent or column)}"
                )
        for node in _clause_nodes(select, ("expressions", "where", "order")):
            self.functions_in(node)

    def disallowed_outputs(self, query: exp.Query) -> None:
        banned = {
            (name, column)
            for name, source in self.sources.items()
            if isinstance(source.rule, CustomRule)
            for column in source.rule.disallowed_columns
        }
        if not banned:
            return
        root = traverse_scope(query)[-1]
        for projection in query.selects:
            for base in _lineage(projection, root):
                if base in banned:
                    raise PolicyError(
                        f"{base[0]}.{base[1]} may never be output (custom rule): {_sql(projection)}"
                    )


Ref = tuple[str, str]


def _inner_equalities(select: exp.Expr) -> list[tuple[Ref, Ref]]:
    """Column equalities of inner joins' ON conditions: (alias, column) pairs."""
    inner = [
        join
        for join in select.args.get("joins") or []
        if not join.side and join.args.get("kind") in (None, "INNER")
    ]
    return [
        ((part.this.table, part.this.name), (part.expression.table, part.expression.name))
        for join in inner
        for part in _conjuncts(join.args.get("on"))
        if isinstance(part, exp.EQ)
        and isinstance(part.this, exp.Column)
        and isinstance(part.expression, exp.Column)
    ]


def _linked(a: Ref, b: Ref, edges: list[tuple[Ref, Ref]]) -> bool:
    reached, frontier = {a}, [a]
    while frontier:
        node = frontier.pop()
        for x, y in edges:
            for here, there in ((x, y), (y, x)):
                if here == node and there not in reached:
                    reached.add(there)
                    frontier.append(there)
    return b in reached


def _distinct_counts(select: exp.Select) -> list[Ref]:
    """The columns this SELECT (not a nested one) counts with COUNT(DISTINCT column)."""
    found: list[Ref] = []
    for node in _clause_nodes(select, ("expressions", "having", "order")):
        for count in node.find_all(exp.Count):
            argument = count.this
            if (
                isinstance(argument, exp.Distinct)
                and len(argument.expressions) == 1
                and isinstance(argument.expressions[0], exp.Column)
            ):
                column = argument.expressions[0]
                found.append((column.table, column.name))
    return found


def _clause_nodes(select: exp.Expr, clauses: tuple[str, ...]) -> list[exp.Expr]:
    """The expressions of these clauses of a SELECT (projections, WHERE, ...)."""
    nodes: list[exp.Expr] = []
    for clause in clauses:
        value = select.args.get(clause)
        nodes += value if isinstance(value, list) else [value] if value is not None else []
    return nodes


def _conjuncts(condition: exp.Expr | None) -> list[exp.Expr]:
    if condition is None:
        return []
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _inside(node: exp.Expr, kinds: tuple[type[exp.Expr], ...], stop: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not stop:
        if isinstance(parent, kinds):
            return True
        parent = parent.parent
    return False


def _in_join(column: exp.Column, select: exp.Expr) -> bool:
    parent: exp.Expr | None = column
    while parent is not None and parent is not select:
        if isinstance(parent.parent, exp.Join) and parent.arg_key == "on":
            return True
        parent = parent.parent
    return False


def _lineage(node: exp.Expr, scope: Scope) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for column in node.find_all(exp.Column):
        source = scope.sources.get(column.table)
        if isinstance(source, exp.Table):
            found.add((source.name, column.name))
        elif isinstance(source, Scope) and isinstance(source.expression, exp.Select):
            for projection in source.expression.selects:
                if projection.alias_or_name == column.name:
                    found |= _lineage(projection, source)
    return found


def check_query(text: str, sources: dict[str, Source], *, bounded: bool = True) -> Checked:
    """Check ``text`` against the rules of ``sources``; returns the SQL to run.

    ``bounded=False`` enforces every threshold with a plain ``HAVING
    COUNT(DISTINCT ...)``: the same result, slower (for comparison).
    """
    query = parse(text, sources)
    read = {t.name for t in query.find_all(exp.Table)}
    checker = _Checker({n: s for n, s in sources.items() if n in read}, bounded=bounded)
    checked = checker.check(query)
    if checked.mode == "custom" and not checked.threshold:
        return Checked(text, checked.mode, 0, checked.columns)  # run exactly what was approved
    return checked


def check_dp(text: str, sources: dict[str, Source], spec: DpSpec) -> Checked:
    """Check the row query of a differentially private analysis.

    The query must be one plain SELECT (no CTEs, subqueries, aggregates,
    DISTINCT, ordering or limits) whose output columns are exactly the privacy
    unit, the declared group keys and the aggregated values. The unit must be
    the identity column of a protected input, and every protected input's
    identity must be joined to it, so each person's contributions can be
    bounded. Group keys must be dimensions; values must be columns the rules
    let be summed. Its rows never leave the enclave: only noisy aggregates do.
    """
    query = parse(text, sources)
    read = {t.name for t in query.find_all(exp.Table)}
    checker = _Checker({n: s for n, s in sources.items() if n in read})
    if checker.mode == "list":
        raise PolicyError("list rules allow no aggregates, differentially private or not")
    scope, select = _dp_select(query)
    checker.joins(scope)
    outputs = _dp_outputs(select, spec)
    unit = outputs[spec.unit]
    unit_table = checker.table_of(scope, unit)
    if unit_table is None or unit.name != unit_table.schema.identity_column:
        raise PolicyError(f"the privacy unit {spec.unit!r} must be an input's identity column")
    _units_joined(scope, checker, unit)
    _dp_columns(scope, checker, outputs, spec)
    where = select.args.get("where")
    if where is not None:
        checker.functions_in(where)
        for column in where.find_all(exp.Column):
            table = checker.table_of(scope, column)
            if table is not None and isinstance(table.rule, AggregationRule):
                checker.dimension(table, table.rule, column)
    return Checked(query.sql(dialect=DIALECT), "dp", 0, list(outputs))


def _dp_select(query: exp.Query) -> tuple[Scope, exp.Select]:
    scopes = traverse_scope(query)
    if len(scopes) != 1 or not isinstance(query, exp.Select):
        raise PolicyError("a DP analysis is one plain SELECT with no CTEs or subqueries")
    for clause in ("distinct", "group", "having", "order", "limit", "offset"):
        if query.args.get(clause):
            raise PolicyError(f"a DP row query takes no {clause.upper()}: the enclave aggregates")
    if query.find(exp.AggFunc) or query.find(exp.Window):
        raise PolicyError("a DP row query has no aggregates or windows: the enclave aggregates")
    return scopes[0], query


def _dp_outputs(select: exp.Select, spec: DpSpec) -> dict[str, exp.Column]:
    outputs: dict[str, exp.Column] = {}
    for projection in select.expressions:
        column = projection.this if isinstance(projection, exp.Alias) else projection
        if not isinstance(column, exp.Column):
            raise PolicyError(f"DP row query outputs must be plain columns: {_sql(projection)}")
        outputs[projection.alias_or_name] = column
    values = {a.column for a in spec.aggregates if a.column is not None}
    expected = {spec.unit, *spec.group_by, *values}
    if set(outputs) != expected:
        raise PolicyError(
            f"the DP row query must output exactly {sorted(expected)}, not {sorted(outputs)}"
        )
    return outputs


def _dp_columns(scope: Scope, checker: _Checker, outputs: dict[str, exp.Column], spec: Any) -> None:
    values = {a.column for a in spec.aggregates if a.column is not None}
    for name, column in outputs.items():
        table = checker.table_of(scope, column)
        rule = table.rule if table is not None else None
        if table is None or not isinstance(rule, AggregationRule) or name == spec.unit:
            continue
        if name in spec.group_by and column.name not in rule.dimensions:
            raise PolicyError(f"group key {name!r} is not a dimension of {table.name!r}")
        summable = rule.allows("sum", column.name) or rule.allows("avg", column.name)
        if name in values and not summable:
            raise PolicyError(f"{table.name}.{column.name} may not be summed under its rule")


def _units_joined(scope: Scope, checker: _Checker, unit: exp.Column) -> None:
    """Every protected input's identity must equal the unit through join equalities."""
    parts = [
        part
        for join in scope.expression.args.get("joins") or []
        for part in _conjuncts(join.args.get("on"))
        if isinstance(part, exp.EQ)
    ]
    edges = [((p.this.table, p.this.name), (p.expression.table, p.expression.name)) for p in parts]
    linked = {(unit.table, unit.name)}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            if (a in linked) != (b in linked):
                linked |= {a, b}
                changed = True
    for alias, source in scope.sources.items():
        table = checker.table_of_source(source)
        if table is None or not table.protected:
            continue
        if (alias, table.schema.identity_column) not in linked:
            raise PolicyError(
                f"{table.name!r} is not joined to the privacy unit on its identity column, so "
                "its people's contributions could not be bounded"
            )
