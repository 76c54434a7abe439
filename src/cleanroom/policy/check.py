"""The static check of an analysis against its inputs' rules, and the rewrite
that enforces thresholds inside the same DuckDB plan.

Pure: SQL text and the inputs' schemas and rules in, the SQL to run (or a
:class:`PolicyError` naming the offending expression and the rule it breaks)
out. The service runs it when an analysis is proposed; the enclave runs it
again before execution, on rules it read from the verified ledger, and runs
only the SQL it returns.

It fails closed. The query must be in the grammar of
:mod:`cleanroom.policy.grammar` (an allow-list of node kinds); names resolve
as DuckDB resolves them, without regard to case; any exception while parsing
or checking is a refusal. Under aggregation rules the query has exactly one
*aggregating scope* over the protected inputs (one FROM with joins of inputs
on declared join columns, filters and groups on dimensions, allowed
aggregates of plain columns); every other scope reads exactly the one before
it, so outer scopes can filter, project, rename, order and re-aggregate those
groups but never combine two aggregations of the same data (the differencing
of "everyone" and "everyone but one" in one query). Thresholds are applied
before any expression of the analyst's runs on a group: the aggregating
scope is split into the raw aggregates per group, thresholded
(``cleanroom.policy.threshold``), and the analyst's projections, HAVING and
ORDER BY over the groups that passed. Casts become ``TRY_CAST`` and
arithmetic runs inside ``TRY``, so no value can fail a conversion, and
comparisons between families (a string with a number) are refused, so no
row's value is converted implicitly: nothing in an error can depend on data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope as SqlglotScope
from sqlglot.optimizer.scope import traverse_scope

from cleanroom.datasets.schema import Schema
from cleanroom.errors import PolicyError
from cleanroom.models.manifest import ModelManifest
from cleanroom.policy import grammar, threshold
from cleanroom.policy.grammar import AGGREGATES, ARITHMETIC, SCALARS, family
from cleanroom.policy.rules import (
    SCALAR_FUNCTIONS,
    AggregationRule,
    CustomRule,
    DpSpec,
    ListRule,
    reserved_name,
)

__all__ = ["Checked", "PolicyError", "Source", "check_dp", "check_query"]

# sqlglot logs a warning for every statement it cannot parse fully; the check
# turns those into refusals with a reason, so the log line is only noise
logging.getLogger("sqlglot").setLevel(logging.ERROR)

Rule = AggregationRule | ListRule | CustomRule
DIALECT = "duckdb"
# What the SQL this check returns needs of the engine that runs it: TRY must hold what it
# wraps, and DuckDB's common-subexpression pass would hoist an implicit cast shared by two
# comparisons (x BETWEEN 0.5 AND 1.5) out of TRY, where it can fail on one row's value.
ENGINE_SETTINGS = ("SET disabled_optimizers = 'common_subexpressions'",)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab, newline, carriage return
MAX_FROM_ITEMS = 16  # tables one SELECT reads (the join graph is walked per identity)
_sql = grammar.sql


@dataclass(frozen=True)
class Source:
    """An input as the checker sees it: schema, rule, whether its owner approved
    this analysis's exact text (what a custom rule requires), and the model
    manifest of a model asset (which only a scoring analysis may read)."""

    name: str
    schema: Schema
    rule: Rule | None
    owner_approved: bool = False
    model: ModelManifest | None = None

    @property
    def protected(self) -> bool:
        return isinstance(self.rule, (AggregationRule, ListRule))


@dataclass(frozen=True)
class Checked:
    sql: str
    mode: str  # "aggregation" | "list" | "custom" | "dp"
    threshold: int
    columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Input:
    """An input with every name lower-cased, as DuckDB compares names."""

    source: Source
    name: str
    identity: str
    families: dict[str, str]
    dimensions: frozenset[str]
    join_columns: frozenset[str]
    list_columns: frozenset[str]
    aggregates: frozenset[tuple[str, str]]  # (function, column)
    disallowed: frozenset[str]
    permissive: bool  # a custom rule: the owner approved this text, columns are not limited

    @classmethod
    def of(cls, source: Source) -> _Input:
        rule = source.rule
        none: frozenset[str] = frozenset()

        def names(values: Any) -> frozenset[str]:
            return frozenset(v.lower() for v in values)

        families = {
            c.name.lower(): grammar.SCHEMA_FAMILIES.get(c.type, grammar.NUMBER)
            for c in source.schema.columns
        }
        return cls(
            source=source,
            name=source.name.lower(),
            identity=source.schema.identity_column.lower(),
            families=families,
            dimensions=names(rule.dimensions) if isinstance(rule, AggregationRule) else none,
            join_columns=(
                names(rule.join_columns) if isinstance(rule, (AggregationRule, ListRule)) else none
            ),
            list_columns=names(rule.list_columns) if isinstance(rule, ListRule) else none,
            aggregates=(
                frozenset((a.function, c.lower()) for a in rule.aggregates for c in a.columns)
                if isinstance(rule, AggregationRule)
                else frozenset()
            ),
            disallowed=(names(rule.disallowed_columns) if isinstance(rule, CustomRule) else none),
            permissive=not source.protected,
        )

    def allows(self, function: str, column: str) -> bool:
        return self.permissive or (function, column) in self.aggregates


@dataclass
class _Scope:
    """One SELECT of the query and what its FROM items are."""

    select: exp.Select
    sources: dict[str, _Input | _Scope]  # alias -> input or scope
    outputs: dict[str, str] = field(default_factory=dict)  # column -> family, once checked

    @property
    def inputs(self) -> dict[str, _Input]:
        return {a: s for a, s in self.sources.items() if isinstance(s, _Input)}


# -- parsing ---------------------------------------------------------------------------


def _parse(text: str) -> exp.Select:
    if not isinstance(text, str) or len(text) > grammar.MAX_SQL_CHARS:
        raise PolicyError(f"an analysis is SQL text of at most {grammar.MAX_SQL_CHARS} characters")
    if CONTROL.search(text):
        # DuckDB stops reading at NUL while the parser reads on: the two must see one text
        raise PolicyError("an analysis may not contain control characters (tab and newline may)")
    try:
        statements = sqlglot.parse(text, dialect=DIALECT)
    except RecursionError as exc:
        raise PolicyError("the analysis nests too deeply to check") from exc
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PolicyError(f"the analysis is not valid SQL: {first}") from exc
    if len(statements) == 1 and isinstance(statements[0], exp.SetOperation):
        raise PolicyError(
            "set operations (UNION, INTERSECT, EXCEPT) are not part of the SQL the room "
            f"accepts: they can single out rows: {_sql(statements[0])}"
        )
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise PolicyError("an analysis is exactly one SELECT query")
    query = statements[0]
    grammar.bounded(query)
    return query


def _inputs(query: exp.Select, sources: dict[str, Source]) -> dict[str, _Input]:
    """The declared inputs this query reads, by lower-cased name."""
    by_name: dict[str, _Input] = {}
    for source in sources.values():
        if source.model is not None:
            raise PolicyError(f"{source.name!r} is a model: SQL cannot read a model")
        view = _Input.of(source)
        if view.name in by_name:
            raise PolicyError(
                f"inputs {by_name[view.name].source.name!r} and {source.name!r} differ only "
                "by case: DuckDB cannot tell them apart"
            )
        by_name[view.name] = view
    ctes = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
    clash = ctes & set(by_name)
    if clash:
        raise PolicyError(f"a CTE may not take the name of an input: {sorted(clash)[0]!r}")
    read: dict[str, _Input] = {}
    for table in query.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or table.args.get("db"):
            raise PolicyError(f"table functions are not allowed: {_sql(table)}")
        name = table.name.lower()
        if name in by_name:
            read[name] = by_name[name]
        elif name not in ctes:
            raise PolicyError(f"{table.name!r} is not an input of this analysis")
    if not read:
        raise PolicyError("an analysis must read at least one of its inputs")
    return read


def _qualify(query: exp.Select, inputs: dict[str, _Input]) -> exp.Select:
    schema: dict[str, object] = {
        name: dict.fromkeys(i.families, "VARCHAR") for name, i in inputs.items()
    }
    try:
        qualified = qualify(
            query,
            schema=schema,
            dialect=DIALECT,
            validate_qualify_columns=True,
            quote_identifiers=True,
        )
    except RecursionError as exc:
        raise PolicyError("the analysis nests too deeply to check") from exc
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PolicyError(f"the analysis does not resolve: {first}") from exc
    if not isinstance(qualified, exp.Select):
        raise PolicyError("an analysis is exactly one SELECT query")
    return qualified


def _mode(inputs: dict[str, _Input]) -> str:
    kinds = {type(i.source.rule) for i in inputs.values()}
    if len(kinds) > 1:
        named = sorted(k.__name__.replace("Rule", "").lower() for k in kinds if k is not type(None))
        raise PolicyError(
            "datasets under different kinds of rules cannot meet in one query "
            f"({', '.join(named)}{', no rule' if type(None) in kinds else ''})"
        )
    kind = kinds.pop()
    if kind is AggregationRule:
        return "aggregation"
    if kind is ListRule:
        return "list"
    for item in inputs.values():
        if not item.source.owner_approved:
            raise PolicyError(
                f"{item.source.name!r} has a custom rule: its owner must approve this exact query"
            )
    return "custom"


# -- scopes ----------------------------------------------------------------------------


def _scopes(root: exp.Select, inputs: dict[str, _Input]) -> list[_Scope]:
    """Every SELECT of the query, inner ones first; refuses SELECTs anywhere
    but the root, a CTE or a FROM item, and CTEs read other than once."""
    ctes: dict[str, _Scope] = {}
    uses: dict[str, int] = {}
    order: list[_Scope] = []

    def scope_of(select: exp.Expr) -> _Scope:
        if not isinstance(select, exp.Select):
            raise PolicyError(f"only plain SELECTs are allowed here: {_sql(select)}")
        if select is not root and select.args.get("with_"):
            raise PolicyError(f"WITH is allowed only at the start of the query: {_sql(select)}")
        scope = _Scope(select, {})
        items = [select.args.get("from_"), *(select.args.get("joins") or [])]
        if items[0] is None:
            raise PolicyError(
                f"every SELECT must read from an input or a CTE: {_sql(select)}"  # noqa: S608 - a message
            )
        for item in items:
            node = item.this if item is not None else None
            alias = node.alias_or_name.lower() if node is not None else ""
            if alias in scope.sources:
                raise PolicyError(f"the name {alias!r} is used twice in one FROM")
            if isinstance(node, exp.Table):
                name = node.name.lower()
                if name in ctes:
                    uses[name] += 1
                    scope.sources[alias] = ctes[name]
                elif name in inputs:
                    scope.sources[alias] = inputs[name]
                else:
                    raise PolicyError(f"{node.name!r} is not an input or an earlier CTE")
            elif isinstance(node, exp.Subquery):
                scope.sources[alias] = scope_of(node.this)
            else:
                raise PolicyError(f"only inputs, CTEs and subqueries can be read: {_sql(item)}")
        order.append(scope)
        return scope

    with_ = root.args.get("with_")
    for cte in with_.expressions if with_ is not None else []:
        name = cte.alias_or_name.lower()
        if name in ctes:
            raise PolicyError(f"the CTE name {name!r} is used twice")
        ctes[name] = scope_of(cte.this)
        uses[name] = 0
    scope_of(root)
    for name, count in uses.items():
        if count != 1:
            raise PolicyError(
                f"every CTE must be read exactly once; {name!r} is read {count} times "
                "(two readings of one aggregation can be differenced)"
            )
    known = {id(s.select) for s in order}
    for select in root.find_all(exp.Select):
        if id(select) not in known:
            raise PolicyError(f"subqueries in expressions are not allowed: {_sql(select)}")
    return order


# -- the checker -----------------------------------------------------------------------


def _conjuncts(condition: exp.Expr | None) -> list[exp.Expr]:
    """The parts of an AND, parentheses removed: ``ON (a = b) AND (c = d)``."""
    if condition is None:
        return []
    condition = condition.unnest()
    if isinstance(condition, exp.And):
        return [part for side in condition.flatten() for part in _conjuncts(side)]
    return [condition]


def _inside_aggregate(node: exp.Expr, stop: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not stop:
        if type(parent) in AGGREGATES:
            return True
        parent = parent.parent
    return False


def _literal_int(node: exp.Expr | None, what: str) -> None:
    if node is None:
        return
    value = node.args.get("expression") if isinstance(node, (exp.Limit, exp.Offset)) else node
    if not (isinstance(value, exp.Literal) and value.is_int):
        raise PolicyError(f"{what} takes a whole number: {_sql(node)}")


class _Checker:
    def __init__(self, inputs: dict[str, _Input], mode: str, k: int) -> None:
        self.inputs = inputs
        self.mode = mode
        self.k = k
        protected = [i for i in inputs.values() if not i.permissive]
        rules = [i.source.rule for i in protected]
        # strictest wins: a function must be allowed by every protected rule queried
        allowed = [
            set(r.scalar_functions) for r in rules if isinstance(r, (AggregationRule, ListRule))
        ]
        self.functions: set[str] = set.intersection(*allowed) if allowed else set(SCALAR_FUNCTIONS)

    # -- names and families ----------------------------------------------------------

    def resolver(self, scope: _Scope) -> grammar.Resolve:
        def resolve(column: exp.Column) -> str:
            source = scope.sources.get(column.table.lower())
            name = column.name.lower()
            if isinstance(source, _Input) and name in source.families:
                return source.families[name]
            if isinstance(source, _Scope) and name in source.outputs:
                return source.outputs[name]
            raise PolicyError(f"the column {_sql(column)} does not resolve here")

        return resolve

    def functions_in(self, node: exp.Expr) -> None:
        for function in node.walk():
            name = SCALARS.get(type(function))
            if name is not None and name not in self.functions:
                raise PolicyError(
                    f"function {name} is not allowed by the rules of the datasets queried "
                    f"(allowed: {', '.join(sorted(self.functions)) or 'none'}): {_sql(function)}"
                )

    # -- joins -----------------------------------------------------------------------

    def joins(self, scope: _Scope, *, inner_only: str = "") -> None:
        """The FROM items' joins: inner or outer equalities of join columns, each
        joining the table it adds; ``inner_only``, the reason outer joins are refused."""
        select = scope.select
        joins = select.args.get("joins") or []
        if len(joins) >= MAX_FROM_ITEMS:
            raise PolicyError(f"a SELECT reads at most {MAX_FROM_ITEMS} tables")
        seen = {select.args["from_"].this.alias_or_name.lower()}
        for join in select.args.get("joins") or []:
            alias = join.this.alias_or_name.lower()
            kind = (join.args.get("kind") or "").upper()
            side = (join.args.get("side") or "").upper()
            if (
                join.args.get("using")
                or join.args.get("method")
                or kind not in ("", "INNER", "OUTER")
            ):
                raise PolicyError(
                    f"cross, natural, semi and anti joins are not allowed: {_sql(join)}"
                )
            if inner_only and side:
                raise PolicyError(f"{inner_only}: {_sql(join)}")
            if kind == "OUTER" and not side:
                raise PolicyError(f"write LEFT, RIGHT or FULL for outer joins: {_sql(join)}")
            condition = join.args.get("on")
            if condition is None:
                raise PolicyError(f"cross joins are not allowed: {_sql(join)}")
            linked = False
            for part in _conjuncts(condition):
                if not (
                    isinstance(part, exp.EQ)
                    and isinstance(part.this, exp.Column)
                    and isinstance(part.expression, exp.Column)
                ):
                    raise PolicyError(
                        f"join conditions must be equalities of join columns: {_sql(part)}"
                    )
                tables = {part.this.table.lower(), part.expression.table.lower()}
                if len(tables) != 2 or not tables <= seen | {alias}:
                    raise PolicyError(
                        f"a join condition compares columns of two tables of the join: {_sql(part)}"
                    )
                linked = linked or alias in tables
                for column in (part.this, part.expression):
                    self.join_column(scope, column, part)
            if not linked:
                raise PolicyError(f"the join condition does not mention {alias!r}: {_sql(join)}")
            grammar.condition(condition, self.resolver(scope))
            seen.add(alias)
        if self.mode != "dp":  # a DP row query bounds each person's rows however joined
            _each_input_once(scope)

    def join_column(self, scope: _Scope, column: exp.Column, part: exp.Expr) -> None:
        source = scope.sources.get(column.table.lower())
        if not isinstance(source, _Input):
            raise PolicyError(f"only inputs can be joined, on their join columns: {_sql(part)}")
        if source.permissive:
            return
        if column.name.lower() not in source.join_columns:
            rule = source.source.rule
            kind = rule.type if rule is not None else "custom"
            raise PolicyError(
                f"join on {column.name!r}, which is not a declared join column of "
                f"{source.source.name!r} ({kind} rule): {_sql(part)}"
            )

    # -- the aggregating scope --------------------------------------------------------

    def row_column(self, scope: _Scope, column: exp.Column) -> None:
        """A column used outside aggregates and joins: it must be a dimension."""
        source = scope.sources.get(column.table.lower())
        if not isinstance(source, _Input):
            raise PolicyError(f"the column {_sql(column)} does not resolve here")
        name = column.name.lower()
        if source.permissive or name in source.dimensions:
            return
        table = source.source.name
        context = _sql(column.parent or column)
        if name == source.identity:
            raise PolicyError(
                f"the identity column {table}.{column.name} may appear only inside "
                f"COUNT(DISTINCT ...) or a join condition: {context}"
            )
        if name in source.join_columns:
            raise PolicyError(
                f"join column {table}.{column.name} may be used only in join conditions: {context}"
            )
        raise PolicyError(
            f"{table}.{column.name} is not a dimension of its aggregation rule: it may appear "
            f"only inside an allowed aggregate: {context}"
        )

    def aggregate(self, scope: _Scope, aggregate: exp.Expr) -> None:
        """An aggregate over protected rows: an allowed function of one plain column."""
        name = AGGREGATES[type(aggregate)]
        argument = aggregate.this
        if isinstance(aggregate, exp.Count):
            if isinstance(argument, exp.Star):
                return
            if isinstance(argument, exp.Distinct):
                name = "count_distinct"
                parts = argument.expressions
                argument = parts[0] if len(parts) == 1 else None
        elif isinstance(argument, exp.Distinct):
            raise PolicyError(f"DISTINCT is allowed in COUNT only: {_sql(aggregate)}")
        if not isinstance(argument, exp.Column):
            raise PolicyError(
                f"the argument of {name} must be a plain column (expressions can smuggle a "
                f"row's value into an aggregate): {_sql(aggregate)}"
            )
        source = scope.sources.get(argument.table.lower())
        if not isinstance(source, _Input):
            raise PolicyError(f"the column {_sql(argument)} does not resolve here")
        if not source.allows(name, argument.name.lower()):
            raise PolicyError(
                f"{name} on {source.source.name}.{argument.name} is not allowed by its "
                f"aggregation rule: {_sql(aggregate)}"
            )

    def base(self, scope: _Scope) -> None:
        """The one scope that reads inputs: it must aggregate them."""
        select = scope.select
        if select.args.get("distinct"):
            raise PolicyError(f"SELECT DISTINCT emits rows; use GROUP BY: {_sql(select)}")
        self.joins(scope)
        resolve = self.resolver(scope)
        _unalias_clauses(select)
        keys = _group_keys(select)
        aggregates = [
            node
            for clause in ("expressions", "having", "order")
            for part in _clause(select, clause)
            for node in part.walk()
            if type(node) in AGGREGATES
        ]
        if not keys and not aggregates:
            raise PolicyError(
                "every SELECT over protected data must aggregate; this one emits rows: "
                f"{_sql(select)}"
            )
        # (1) row-level clauses: dimensions only, no aggregates
        for part in [*_clause(select, "where"), *keys]:
            found = part.find(*AGGREGATES)
            if found is not None:
                raise PolicyError(f"aggregates are not allowed here: {_sql(part)}")
        # (2) every column outside aggregates and join conditions is a dimension
        for clause in ("expressions", "where", "group", "having", "order"):
            for part in _clause(select, clause):
                for column in part.find_all(exp.Column):
                    if not _inside_aggregate(column, select):
                        self.row_column(scope, column)
        # (3) aggregates: allowed functions of plain columns, never nested
        for aggregate in aggregates:
            if any(type(n) in AGGREGATES for n in aggregate.walk() if n is not aggregate):
                raise PolicyError(f"aggregates cannot be nested: {_sql(aggregate)}")
            self.aggregate(scope, aggregate)
        # (4) values and functions: families agree, every function in the catalogue
        self.values(scope, resolve)

    def values(self, scope: _Scope, resolve: grammar.Resolve) -> None:
        """Every expression of a SELECT: functions from the catalogue, families that
        agree, boolean conditions, whole-number limits; then its output families."""
        select = scope.select
        for clause in ("expressions", "where", "group", "having", "order"):
            for part in _clause(select, clause):
                self.functions_in(part)
                family(part, resolve)
        for clause in ("where", "having"):
            for node in _clause(select, clause):
                grammar.condition(node, resolve)
        for clause in ("limit", "offset"):
            _literal_int(select.args.get(clause), clause.upper())
        scope.outputs = _outputs(select, resolve)

    def after(self, scope: _Scope) -> None:
        """A scope over the aggregating one: filters, projects, orders, re-aggregates."""
        select = scope.select
        if select.args.get("joins") or len(scope.sources) != 1:
            raise PolicyError(
                "a query over an aggregation reads it alone: joining two aggregations of the "
                f"same data can difference them: {_sql(select)}"
            )
        if select.args.get("distinct"):
            raise PolicyError(f"use GROUP BY instead of SELECT DISTINCT: {_sql(select)}")
        resolve = self.resolver(scope)
        _unalias_clauses(select)
        own = [
            node
            for clause in ("expressions", "having", "order")
            for part in _clause(select, clause)
            for node in part.walk()
        ]
        for aggregate in (n for n in own if type(n) in AGGREGATES):
            argument = aggregate.this
            if isinstance(argument, exp.Distinct) or not isinstance(
                argument, (exp.Column, exp.Star)
            ):
                raise PolicyError(
                    f"aggregates over groups take one plain column: {_sql(aggregate)}"
                )
        for part in [*_clause(select, "where"), *_group_keys(select)]:
            if part.find(*AGGREGATES) is not None:
                raise PolicyError(f"aggregates are not allowed here: {_sql(part)}")
        self.values(scope, resolve)

    def list_scope(self, scope: _Scope) -> None:
        select = scope.select
        if select.find(*AGGREGATES) or select.args.get("group") or select.args.get("having"):
            raise PolicyError(f"list rules output rows, not aggregates: {_sql(select)}")
        _overlap_only(select)
        self.joins(
            scope,
            inner_only="list rules output the overlap of datasets: inner joins only (an "
            "outer join lists who is not in the other dataset)",
        )
        resolve = self.resolver(scope)
        _unalias_clauses(select)
        for clause in ("expressions", "where", "order"):
            for part in _clause(select, clause):
                for column in part.find_all(exp.Column):
                    source = scope.sources.get(column.table.lower())
                    name = column.name.lower()
                    if not isinstance(source, _Input) or name not in source.list_columns:
                        table = source.source.name if isinstance(source, _Input) else "?"
                        raise PolicyError(
                            f"{table}.{column.name} is not a list column of its list rule: "
                            f"{_sql(column.parent or column)}"
                        )
        self.values(scope, resolve)


def _overlap_only(select: exp.Select) -> None:
    """List rules output the overlap of datasets: two inputs at least (and inner
    joins, checked with the joins)."""
    if not select.args.get("joins"):
        raise PolicyError("list rules output the overlap of datasets: join at least two inputs")


def _each_input_once(scope: _Scope) -> None:
    read = [source.name for source in scope.inputs.values()]
    if len(set(read)) != len(scope.sources):
        raise PolicyError(
            "an input is read once per SELECT: joining an input to itself links one "
            "person's rows (under list rules) or makes groups that differ by one person's "
            "rows (under thresholds)"
        )


def _clause(select: exp.Select, clause: str) -> list[exp.Expr]:
    value = select.args.get(clause)
    if value is None:
        return []
    if clause == "expressions":
        return list(value)
    if clause in ("where", "having"):
        return [value.this]
    if clause == "group":
        return list(value.expressions)
    if clause == "order":
        return [o.this for o in value.expressions]
    return [value]


def _unalias_clauses(select: exp.Select) -> None:
    """Replace references to output names in GROUP BY, HAVING and ORDER BY by
    what they name, as DuckDB resolves them, and expand GROUP BY ALL.

    qualify() has already expanded every position (``GROUP BY 1``): a literal
    left in GROUP BY or ORDER BY (in parentheses or negated too) is a constant,
    which DuckDB might read as a position again once the query is rewritten.
    Grouping or ordering by a constant changes nothing, so such keys are dropped."""
    projections = select.expressions
    named: dict[str, exp.Expr] = {}
    for projection in projections:
        named.setdefault(projection.alias_or_name.lower(), projection.unalias())

    def swap(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and not node.table:
            target = named.get(node.name.lower())
            if target is None:
                raise PolicyError(f"{node.name!r} names no column or output here")
            return target.copy()
        return node

    def constant(node: exp.Expr) -> bool:
        while isinstance(node, (exp.Paren, exp.Neg)):
            node = node.this
        return isinstance(node, exp.Literal)

    group = select.args.get("group")
    if group is not None:
        if group.args.get("all"):
            keys = [p.unalias().copy() for p in projections if not p.find(*AGGREGATES)]
        else:
            keys = list(group.expressions)
        kept = [k.transform(swap) for k in keys if not constant(k)]
        select.set("group", exp.Group(expressions=kept) if kept else None)
    having = select.args.get("having")
    if having is not None:
        having.set("this", having.this.transform(swap))
    order = select.args.get("order")
    if order is not None:
        items = [i for i in order.expressions if not constant(i.this)]
        for item in items:
            item.set("this", item.this.transform(swap))
        select.set("order", exp.Order(expressions=items) if items else None)


def _group_keys(select: exp.Select) -> list[exp.Expr]:
    group = select.args.get("group")
    return list(group.expressions) if group is not None else []


def _outputs(select: exp.Select, resolve: grammar.Resolve) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for projection in select.expressions:
        name = projection.alias_or_name.lower()
        if name in outputs:
            raise PolicyError(f"two output columns are named {name!r}")
        outputs[name] = family(projection, resolve)
    return outputs


# -- the rewrite: suppress first, then the analyst's expressions ------------------------


def _may_fail(part: exp.Expr) -> bool:
    """Arithmetic, comparisons and scalar functions: each can fail on some value,
    directly or through an implicit cast DuckDB adds (a DECIMAL(38,0) compared with
    0.5 is widened and overflows; a DATE compared with a TIMESTAMP may be out of its
    range). Join conditions are equalities of join columns of one family and stay
    as written, so DuckDB can still join them by hash."""
    if not isinstance(part, (*ARITHMETIC, exp.Abs, exp.Predicate, exp.Func)):
        return False
    if isinstance(part, exp.If) and isinstance(part.parent, exp.Case):
        return False  # a WHEN ... THEN of a CASE: its condition and value are wrapped
    node: exp.Expr | None = part
    while node is not None:  # inside a join's ON condition, and nowhere else in a join
        if node.arg_key == "on" and isinstance(node.parent, exp.Join):
            return False
        node = node.parent
    return True


def _safe(node: exp.Expr) -> exp.Expr:
    """Casts become TRY_CAST, and arithmetic, comparisons and functions run in TRY:
    no value can make the query fail, so neither a failure nor its text depends on
    data (a condition that fails is NULL: the row is left out). Returns the node,
    or what replaced it."""
    aggregating: set[int] = set()  # nodes with an aggregate inside
    root = node
    # children before their parents, so a cast inside arithmetic is converted too
    for part in reversed(list(node.dfs())):
        new: exp.Expr | None = None
        if type(part) in AGGREGATES or any(id(c) in aggregating for c in part.iter_expressions()):
            aggregating.add(id(part))
        if type(part) is exp.Cast:
            new = exp.TryCast(this=part.this, to=part.to)
            part.replace(new)
        elif (
            _may_fail(part)
            and not isinstance(part.parent, exp.Try)
            # DuckDB evaluates no aggregate inside TRY: arithmetic over the aggregating
            # SELECT's aggregates is wrapped once they are columns over the groups that
            # passed; what an outer SELECT re-aggregates is over released groups
            and id(part) not in aggregating
        ):
            new = exp.Try()
            part.replace(new)
            new.set("this", part)
        if new is not None:
            if id(part) in aggregating:
                aggregating.add(id(new))
            if part is root:
                root = new
    return root


def _suppress_first(
    scope: _Scope, checker: _Checker, tag: str, bounded: bool, inputs: set[str]
) -> exp.Select:
    """The aggregating scope as two: its raw aggregates per group, thresholded,
    and the analyst's projections, HAVING and ORDER BY over the groups that passed."""
    select = scope.select
    keys = _group_keys(select)
    aggregates: dict[str, exp.Expr] = {}
    for clause in ("expressions", "having", "order"):
        for part in _clause(select, clause):
            for node in part.walk():
                if type(node) in AGGREGATES:
                    aggregates.setdefault(node.sql(dialect=DIALECT, copy=False), node)
    groups = f"__cleanroom_{tag}_groups"
    key_texts = [k.sql(dialect=DIALECT, copy=False) for k in keys]
    key_names = {text: f"g{j}" for j, text in enumerate(key_texts)}
    aggregate_names = {text: f"a{i}" for i, text in enumerate(aggregates)}
    inner = exp.Select(
        expressions=[
            *(exp.alias_(k.copy(), key_names[t]) for k, t in zip(keys, key_texts, strict=True)),
            *(exp.alias_(a.copy(), aggregate_names[t]) for t, a in aggregates.items()),
        ]
        or [exp.alias_(exp.Count(this=exp.Star()), "a0")],
        from_=select.args["from_"].copy(),
        joins=[j.copy() for j in select.args.get("joins") or []],
    )
    if select.args.get("where") is not None:
        inner.set("where", select.args["where"].copy())
    if keys:
        inner.set("group", exp.Group(expressions=[k.copy() for k in keys]))
    identities = _identities(scope, inner)
    enforced = threshold.enforce(
        inner, identities, checker.k, tag=tag, inputs=inputs, bounded=bounded
    )

    def over_groups(node: exp.Expr) -> exp.Expr:
        def swap(part: exp.Expr) -> exp.Expr:
            text = part.sql(dialect=DIALECT, copy=False)
            if type(part) in AGGREGATES and text in aggregate_names:
                return exp.column(aggregate_names[text], groups, quoted=True)
            if text in key_names and not isinstance(part, exp.Literal):
                return exp.column(key_names[text], groups, quoted=True)
            return part

        swapped = node.copy().transform(swap)
        for column in swapped.find_all(exp.Column):
            if column.table != groups:
                raise PolicyError(
                    f"{_sql(column)} must be a GROUP BY expression or inside an aggregate"
                )
        return _safe(swapped)  # arithmetic over aggregates, now over columns, runs in TRY

    outer = exp.Select(
        expressions=[
            exp.alias_(over_groups(p.unalias()), p.alias_or_name, quoted=True)
            for p in select.expressions
        ],
        from_=exp.From(
            this=exp.Subquery(this=enforced, alias=exp.TableAlias(this=exp.to_identifier(groups)))
        ),
    )
    having = select.args.get("having")
    if having is not None:
        outer.set("where", exp.Where(this=over_groups(having.this)))
    order = select.args.get("order")
    if order is not None:
        items = []
        for item in order.expressions:
            moved = item.copy()
            moved.set("this", over_groups(item.this))
            items.append(moved)
        outer.set("order", exp.Order(expressions=items))
    for clause in ("limit", "offset"):
        if select.args.get(clause) is not None:
            outer.set(clause, select.args[clause].copy())
    return outer


def _identities(scope: _Scope, inner: exp.Select) -> list[threshold.Identity]:
    """The identity of every input the scope reads; those an inner join makes
    equal are counted once (distinct counting is the threshold's whole cost)."""
    equal = _inner_equalities(scope.select)
    counted: list[tuple[str, str]] = []
    already = _distinct_counts(inner)
    identities: list[threshold.Identity] = []
    for alias, source in scope.inputs.items():
        column = (alias, source.identity)
        if any(_linked(column, other, equal) for other in counted):
            continue
        counted.append(column)
        same = [c for c in already if c == column or _linked(column, c, equal)]
        table_alias, name = same[0] if same else column
        declared = source.source.schema
        kind = next(
            (c.type for c in declared.columns if c.name.lower() == source.identity), "string"
        )
        identities.append(
            threshold.Identity(
                column=exp.column(name, table=table_alias, quoted=True),
                integer=kind in ("int32", "int64"),
                counted=bool(same),
            )
        )
    return identities


Ref = tuple[str, str]


def _inner_equalities(select: exp.Select) -> list[tuple[Ref, Ref]]:
    inner = [
        join
        for join in select.args.get("joins") or []
        if not join.side and join.args.get("kind") in (None, "", "INNER")
    ]
    return [
        (
            (part.this.table.lower(), part.this.name.lower()),
            (part.expression.table.lower(), part.expression.name.lower()),
        )
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
    found: list[Ref] = []
    for projection in select.expressions:
        count = projection.unalias()
        argument = count.this if isinstance(count, exp.Count) else None
        if (
            isinstance(argument, exp.Distinct)
            and len(argument.expressions) == 1
            and isinstance(argument.expressions[0], exp.Column)
        ):
            column = argument.expressions[0]
            found.append((column.table.lower(), column.name.lower()))
    return found


def _threshold(inputs: dict[str, _Input], query: exp.Expr) -> int:
    referenced = {c.name.lower() for c in query.find_all(exp.Column)}
    k = 0
    for item in inputs.values():
        rule = item.source.rule
        if isinstance(rule, AggregationRule):
            k = max(k, rule.min_distinct)
            for column, value in rule.column_thresholds.items():
                if column.lower() in referenced:
                    k = max(k, value)
        elif isinstance(rule, CustomRule) and rule.min_distinct:
            k = max(k, rule.min_distinct)
    return k


# -- lineage of outputs (custom rules' disallowed columns) -------------------------------


def _disallowed_outputs(query: exp.Select, inputs: dict[str, _Input]) -> None:
    banned = {(i.name, c) for i in inputs.values() for c in i.disallowed}
    if not banned:
        return
    # any failure to trace is a refusal (check_query fails closed)
    root = traverse_scope(query)[-1]
    known = {i.name: frozenset(i.families) for i in inputs.values()}
    for projection in query.selects:
        for base in _lineage(projection, root, known):
            if base in banned:
                raise PolicyError(
                    f"{base[0]}.{base[1]} may never be output (custom rule): {_sql(projection)}"
                )


def _lineage(
    node: exp.Expr, scope: SqlglotScope, known: dict[str, frozenset[str]]
) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()  # (_stars() has refused every * but COUNT(*)'s)
    for column in node.find_all(exp.Column):
        source = scope.sources.get(column.table)
        name = column.name.lower()
        traced: set[tuple[str, str]] | None = None
        if isinstance(source, exp.Table) and name in known.get(source.name.lower(), ()):
            traced = {(source.name.lower(), name)}
        elif isinstance(source, SqlglotScope) and isinstance(source.expression, exp.Select):
            named = [p for p in source.expression.selects if p.alias_or_name.lower() == name]
            if named:
                traced = set().union(*(_lineage(p, source, known) for p in named))
        if traced is None:
            # only a column of an input's schema, or an output of a SELECT below, is
            # traced: a renamed column (FROM t AS a(x, y)) or a row (SELECT t FROM t) is not
            raise PolicyError(f"{_sql(column)} cannot be traced to an input column")
        found |= traced
    return found


# -- entry points ----------------------------------------------------------------------


@contextmanager
def _fail_closed() -> Iterator[None]:
    """Any failure inside a check is a refusal, naming only the failure's kind."""
    try:
        yield
    except PolicyError:
        raise
    except RecursionError as exc:
        raise PolicyError("the analysis nests too deeply to check") from exc
    except Exception as exc:
        raise PolicyError(
            f"the analysis could not be checked, so it is refused ({type(exc).__name__})"
        ) from exc


def check_query(text: str, sources: dict[str, Source], *, bounded: bool = True) -> Checked:
    """Check ``text`` against the rules of ``sources``; returns the SQL to run.

    Any failure inside the check is a refusal (:class:`PolicyError`), never
    another exception. ``bounded=False`` enforces every threshold with a plain
    ``HAVING COUNT(DISTINCT ...)``: the same result, slower (for comparison).
    """
    with _fail_closed():
        return _check_query(text, sources, bounded=bounded)


def _check_query(text: str, sources: dict[str, Source], *, bounded: bool) -> Checked:
    query = _parse(text)
    inputs = _inputs(query, sources)
    mode = _mode(inputs)
    k = _threshold(inputs, query)
    as_written = mode == "custom" and not k  # the owners approved this exact text
    if as_written and not any(i.disallowed for i in inputs.values()):
        qualified = _qualify(query, inputs)
        return Checked(text, mode, 0, [p.alias_or_name for p in qualified.selects])
    # never-output columns are traced only through SQL the grammar describes (a renamed
    # column, a row as a value or COLUMNS('regex') would carry one out untraced)
    grammar.walk(query)
    qualified = _qualify(query, inputs)
    grammar.walk(qualified)
    _stars(qualified)
    if as_written:
        _scopes(qualified, inputs)  # SELECTs only where outputs can be traced
        _disallowed_outputs(qualified, inputs)
        return Checked(text, mode, 0, [p.alias_or_name for p in qualified.selects])
    _disallowed_outputs(qualified, inputs)
    # column thresholds by the columns the query really uses (USING and NATURAL expanded)
    k = _threshold(inputs, qualified)
    checker = _Checker(inputs, mode, k)
    scopes = _scopes(qualified, inputs)
    if mode == "list":
        if len(scopes) != 1:
            raise PolicyError("a query under list rules is one SELECT, with no CTEs or subqueries")
        checker.list_scope(scopes[0])
        final = _safe(qualified)
        return Checked(final.sql(dialect=DIALECT, copy=False), mode, 0, _names(qualified))
    reading = [s for s in scopes if s.inputs]
    if len(reading) != 1:
        raise PolicyError(
            "under aggregation rules a query aggregates the inputs in exactly one SELECT; "
            "outer SELECTs may filter, project and order its groups (two aggregations of "
            f"the same data can be differenced): {len(reading)} SELECTs read inputs"
        )
    base = reading[0]
    if any(isinstance(s, _Scope) for s in base.sources.values()):
        raise PolicyError(
            f"the aggregating SELECT reads inputs only, not CTEs or subqueries: {_sql(base.select)}"
        )
    checker.base(base)
    for scope in scopes[scopes.index(base) + 1 :]:
        checker.after(scope)
    for scope in scopes[: scopes.index(base)]:
        raise PolicyError(f"this SELECT reads no input and no aggregation: {_sql(scope.select)}")
    names = [p.alias_or_name for p in qualified.expressions]
    _safe(qualified)
    names_of_inputs = set(inputs)
    rewritten = _suppress_first(base, checker, "t0", bounded, names_of_inputs) if k else None
    if rewritten is not None:
        if base.select is qualified:
            qualified = rewritten
        else:
            base.select.replace(rewritten)
    return Checked(qualified.sql(dialect=DIALECT, copy=False), mode, k, names)


def _stars(query: exp.Expr) -> None:
    for star in query.find_all(exp.Star):
        if not isinstance(star.parent, exp.Count):
            raise PolicyError(f"* is allowed in COUNT(*) only: {_sql(star.parent or star)}")


def _names(select: exp.Select) -> list[str]:
    return [p.alias_or_name for p in select.expressions]


# -- differential privacy ---------------------------------------------------------------


def qualified(text: str, sources: dict[str, Source]) -> exp.Select:
    """The query parsed, its inputs resolved and every column qualified (``*``
    expanded): for checks that look at every column a query touches, in any clause.
    Any failure is a refusal."""
    with _fail_closed():
        query = _parse(text)
        return _qualify(query, _inputs(query, sources))


def check_dp(text: str, sources: dict[str, Source], spec: DpSpec) -> Checked:
    """Check the row query of a differentially private analysis.

    The query must be one plain SELECT in the grammar (no CTEs, subqueries,
    aggregates, DISTINCT, ordering, limits or samples) whose outputs are
    exactly the privacy unit, the declared group keys and the aggregated
    values, each a plain column under a name used once (without regard to
    case) and not reserved by the mechanism. The unit must be the identity
    column of a protected input; inputs are joined by inner joins only and
    every protected input's identity is joined to the unit, so each person's
    contributions can be bounded. Group keys must be dimensions and never the
    unit; values must be columns the rules let be summed. Its rows never leave
    the enclave: only noisy aggregates do.
    """
    with _fail_closed():
        return _check_dp(text, sources, spec)


def _check_dp(text: str, sources: dict[str, Source], spec: DpSpec) -> Checked:  # noqa: PLR0912
    query = _parse(text)
    grammar.walk(query)
    inputs = _inputs(query, sources)
    mode = _mode(inputs)
    if mode == "list":
        raise PolicyError("list rules allow no aggregates, differentially private or not")
    qualified = _qualify(query, inputs)
    grammar.walk(qualified)
    _stars(qualified)
    scopes = _scopes(qualified, inputs)
    if len(scopes) != 1:
        raise PolicyError("a DP analysis is one plain SELECT with no CTEs or subqueries")
    scope = scopes[0]
    select = scope.select
    for clause in ("distinct", "group", "having", "order", "limit", "offset"):
        if select.args.get(clause):
            raise PolicyError(f"a DP row query takes no {clause.upper()}: the enclave aggregates")
    if select.find(*AGGREGATES):
        raise PolicyError("a DP row query has no aggregates: the enclave aggregates")
    checker = _Checker(inputs, "dp", 0)
    checker.joins(
        scope,
        inner_only="a DP row query joins with inner joins only (outer joins merge the "
        "unmatched people into one)",
    )
    outputs = _dp_outputs(select, spec)
    unit = outputs[spec.unit.lower()]
    unit_source = scope.sources.get(unit.table.lower())
    if not isinstance(unit_source, _Input) or unit.name.lower() != unit_source.identity:
        raise PolicyError(f"the privacy unit {spec.unit!r} must be an input's identity column")
    _units_joined(scope, unit)
    resolve = checker.resolver(scope)
    values = {a.column.lower() for a in spec.aggregates if a.column is not None}
    groups = {g.lower() for g in spec.group_by}
    for name, column in outputs.items():
        source = scope.sources.get(column.table.lower())
        if not isinstance(source, _Input):
            raise PolicyError(f"DP row query outputs are columns of inputs: {_sql(column)}")
        base = column.name.lower()
        if name in values and name == spec.unit.lower():
            raise PolicyError(f"the privacy unit {spec.unit!r} cannot be aggregated")
        if name == spec.unit.lower() or source.permissive:
            continue
        if name in groups and base not in source.dimensions:
            raise PolicyError(f"group key {name!r} is not a dimension of {source.source.name!r}")
        if name in values:
            summable = source.allows("sum", base) or source.allows("avg", base)
            if not summable:
                raise PolicyError(
                    f"{source.source.name}.{column.name} may not be summed under its rule"
                )
            if resolve(column) != grammar.NUMBER:
                raise PolicyError(f"{source.source.name}.{column.name} is not a number")
    for node in _clause(select, "where"):
        checker.functions_in(node)
        grammar.condition(node, resolve)
        for column in node.find_all(exp.Column):
            checker.row_column(scope, column)
    final = _safe(qualified)
    return Checked(final.sql(dialect=DIALECT, copy=False), "dp", 0, list(outputs))


def _dp_outputs(select: exp.Select, spec: DpSpec) -> dict[str, exp.Column]:
    outputs: dict[str, exp.Column] = {}
    for projection in select.expressions:
        column = projection.this if isinstance(projection, exp.Alias) else projection
        if not isinstance(column, exp.Column):
            raise PolicyError(f"DP row query outputs must be plain columns: {_sql(projection)}")
        name = projection.alias_or_name.lower()
        if name in outputs:
            raise PolicyError(f"the DP row query outputs {name!r} twice")
        if reserved_name(name):
            raise PolicyError(f"{name!r} is a name the DP mechanism reserves")
        outputs[name] = column
    values = {a.column.lower() for a in spec.aggregates if a.column is not None}
    expected = {spec.unit.lower(), *(g.lower() for g in spec.group_by), *values}
    if set(outputs) != expected:
        raise PolicyError(
            f"the DP row query must output exactly {sorted(expected)}, not {sorted(outputs)}"
        )
    return outputs


def _units_joined(scope: _Scope, unit: exp.Column) -> None:
    """Every protected input's identity must equal the unit through inner join equalities."""
    edges = _inner_equalities(scope.select)
    start = (unit.table.lower(), unit.name.lower())
    for alias, source in scope.inputs.items():
        if source.permissive:
            continue
        if not _linked(start, (alias, source.identity), edges):
            raise PolicyError(
                f"{source.source.name!r} is not joined to the privacy unit on its identity "
                "column, so its people's contributions could not be bounded"
            )
