"""The SQL the room accepts over protected data, as one allow-list.

Pure: a parsed sqlglot tree in, nothing or a :class:`PolicyError` naming the
first node that is not on the list. Every node of the tree, in every scope,
whether it reads protected data or not, must be of a kind in :data:`NODES`,
and only the arguments listed for its kind may be set. A construct is
accepted because it is described here, never because it is absent from a
list of known attacks: PIVOT, UNPIVOT, SUMMARIZE, UNNEST, VALUES, LATERAL,
QUALIFY, windows, set operations, samples, table functions, subqueries in
expressions, and whatever sqlglot or DuckDB add next year are refused
because they are not here. Kinds are matched exactly (``type(node) is K``),
so a subclass added to a library is not accepted by inheritance.

Where a node kind may appear (a subquery only as a FROM item, an aggregate
only over a plain column, a star only in ``COUNT(*)``...) and what it may
read are decided by :mod:`cleanroom.policy.check`; this module also infers
the *family* of each expression (string, number, temporal, boolean,
interval), so that the check can refuse comparisons that would make DuckDB
convert each row's value (``category = 1`` converts every category to an
integer, and the conversion error quotes the value that failed).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from cleanroom.errors import PolicyError

MAX_SQL_CHARS = 16_384  # parsing is the cost: ~80 ms at this size on 2 cores
MAX_NODES = 5_000
MAX_DEPTH = 128


def _args(*names: str) -> frozenset[str]:
    return frozenset(names)


BINARY = _args("this", "expression")

# node kind -> the arguments it may have set (everything else refused)
NODES: dict[type[exp.Expr], frozenset[str]] = {
    # query structure
    exp.Select: _args(
        "with_",
        "expressions",
        "distinct",
        "from_",
        "joins",
        "where",
        "group",
        "having",
        "order",
        "limit",
        "offset",
    ),
    exp.With: _args("expressions"),
    exp.CTE: _args("this", "alias"),
    exp.TableAlias: _args("this"),
    exp.From: _args("this"),
    exp.Join: _args("this", "on", "side", "kind", "using", "method"),
    exp.Table: _args("this", "alias"),
    exp.Subquery: _args("this", "alias"),
    exp.Identifier: _args("this", "quoted"),
    exp.Where: _args("this"),
    exp.Group: _args("expressions", "all"),
    exp.Having: _args("this"),
    exp.Order: _args("expressions"),
    exp.Ordered: _args("this", "desc", "nulls_first"),
    exp.Limit: _args("expression"),
    exp.Offset: _args("expression"),
    exp.Distinct: _args("expressions"),
    exp.Alias: _args("this", "alias"),
    exp.Column: _args("this", "table"),
    exp.Star: _args(),
    # values
    exp.Literal: _args("this", "is_string"),
    exp.Boolean: _args("this"),
    exp.Null: _args(),
    exp.Interval: _args("this", "unit"),
    exp.Var: _args("this"),
    exp.Cast: _args("this", "to"),
    exp.TryCast: _args("this", "to"),
    exp.DataType: _args("this", "expressions", "nested"),
    exp.DataTypeParam: _args("this"),
    # operators
    exp.Paren: _args("this"),
    exp.Neg: _args("this"),
    exp.Not: _args("this"),
    exp.And: BINARY,
    exp.Or: BINARY,
    exp.EQ: BINARY,
    exp.NEQ: BINARY,
    exp.GT: BINARY,
    exp.GTE: BINARY,
    exp.LT: BINARY,
    exp.LTE: BINARY,
    exp.NullSafeEQ: BINARY,
    exp.NullSafeNEQ: BINARY,
    exp.Is: BINARY,
    exp.In: _args("this", "expressions"),
    exp.Between: _args("this", "low", "high"),
    exp.Like: BINARY,
    exp.ILike: BINARY,
    exp.Add: BINARY,
    exp.Sub: BINARY,
    exp.Mul: BINARY,
    exp.Div: _args("this", "expression", "typed", "safe"),
    exp.Mod: BINARY,
    exp.IntDiv: BINARY,
    exp.Case: _args("this", "ifs", "default"),
    exp.If: _args("this", "true", "false"),
    exp.Coalesce: _args("this", "expressions"),
    # aggregates: one plain argument each (MAX(x, n) sets "expressions": refused)
    exp.Count: _args("this", "big_int"),
    exp.Sum: _args("this"),
    exp.Avg: _args("this"),
    exp.Min: _args("this"),
    exp.Max: _args("this"),
    # the scalar-function catalogue (cleanroom.policy.rules.SCALAR_FUNCTIONS)
    exp.Abs: _args("this"),
    exp.Ceil: _args("this"),
    exp.Floor: _args("this"),
    exp.Round: _args("this", "decimals"),
    exp.DateTrunc: _args("unit", "this"),
    exp.TimestampTrunc: _args("this", "unit"),
    exp.Extract: BINARY,
    exp.Year: _args("this"),
    exp.Month: _args("this"),
    exp.Greatest: _args("this", "expressions"),
    exp.Least: _args("this", "expressions"),
    exp.Lower: _args("this"),
    exp.Upper: _args("this"),
    # added by the check's own rewrite, never accepted from a query
    exp.Try: _args("this"),
}
AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
}
SCALARS: dict[type[exp.Expr], str] = {
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
ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.IntDiv, exp.Neg)
COMPARISONS = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
)
# the types a cast may produce: plain scalars whose values other functions cannot take apart
CAST_TYPES: dict[object, str] = {
    **dict.fromkeys(
        (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT, exp.DataType.Type.CHAR), "string"
    ),
    **dict.fromkeys(
        (
            exp.DataType.Type.TINYINT,
            exp.DataType.Type.SMALLINT,
            exp.DataType.Type.INT,
            exp.DataType.Type.BIGINT,
            exp.DataType.Type.INT128,
            exp.DataType.Type.UTINYINT,
            exp.DataType.Type.USMALLINT,
            exp.DataType.Type.UINT,
            exp.DataType.Type.UBIGINT,
            exp.DataType.Type.FLOAT,
            exp.DataType.Type.DOUBLE,
            exp.DataType.Type.DECIMAL,
        ),
        "number",
    ),
    **dict.fromkeys(
        (
            exp.DataType.Type.DATE,
            exp.DataType.Type.TIMESTAMP,
            exp.DataType.Type.TIMESTAMPNTZ,
            exp.DataType.Type.TIMESTAMPTZ,
        ),
        "temporal",
    ),
    exp.DataType.Type.BOOLEAN: "boolean",
}
# a schema's declared types, by family
SCHEMA_FAMILIES = {
    "boolean": "boolean",
    "int32": "number",
    "int64": "number",
    "float64": "number",
    "string": "string",
    "date": "temporal",
    "timestamp": "temporal",
    "timestamp_tz": "temporal",
}
# names of nodes people write, for refusals
_LABELS: dict[str, str] = {
    "Pivot": "PIVOT/UNPIVOT",
    "Summarize": "SUMMARIZE",
    "Describe": "DESCRIBE",
    "Show": "SHOW",
    "Unnest": "UNNEST",
    "Values": "VALUES",
    "Lateral": "LATERAL",
    "Window": "window functions",
    "Union": "UNION",
    "Intersect": "INTERSECT",
    "Except": "EXCEPT",
    "TableSample": "samples",
    "Anonymous": "function",
    "Qualify": "QUALIFY",
    "Exists": "EXISTS subqueries",
    "IgnoreNulls": "IGNORE NULLS",
    "RespectNulls": "RESPECT NULLS",
    "Filter": "FILTER (an aggregate over a subset of a group: the subset could be one person)",
}


def sql(node: exp.Expr, limit: int = 120) -> str:
    """A node as short DuckDB SQL, for refusals."""
    try:
        text = node.sql(dialect="duckdb")
    except Exception:  # noqa: BLE001 - a refusal must never fail while naming its node
        text = type(node).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label(node: exp.Expr) -> str:
    """What a person calls this node: ``PIVOT``, ``function md5``, ``window functions``."""
    name = type(node).__name__
    if isinstance(node, exp.Anonymous):
        return f"function {node.name.lower()}"
    if isinstance(node, exp.AggFunc) and name not in _LABELS:
        return f"aggregate {node.sql_name().lower()}"
    if isinstance(node, exp.Func) and name not in _LABELS:
        return f"function {node.sql_name().lower()}"
    return _LABELS.get(name, name)


def bounded(root: exp.Expr) -> None:
    """Refuse trees too large or too deep to check in bounded time."""
    count = 0
    stack: list[tuple[exp.Expr, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise PolicyError(f"the analysis is too large to check (over {MAX_NODES} nodes)")
        if depth > MAX_DEPTH:
            raise PolicyError(f"the analysis nests too deeply (over {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def walk(root: exp.Expr) -> None:
    """Refuse the first node whose kind, or one of whose arguments, is not on the list."""
    for node in root.walk():
        allowed = NODES.get(type(node))
        if allowed is None or isinstance(node, exp.Try):
            raise PolicyError(
                f"{label(node)} is not part of the SQL the room accepts over protected "
                f"data (docs/privacy.md lists it): {sql(node)}"
            )
        for key, value in node.args.items():
            if isinstance(node, exp.In) and key == "query" and value is not None:
                raise PolicyError(f"subqueries in expressions are not allowed: {sql(node)}")
            if key not in allowed and value not in (None, False, [], ""):
                raise PolicyError(
                    f"{type(node).__name__.upper()} with {key.upper().rstrip('_')} is not part "
                    f"of the SQL the room accepts over protected data: {sql(node)}"
                )


# -- families: what kind of value each expression has ----------------------------------

STRING, NUMBER, TEMPORAL, BOOLEAN, INTERVAL, NULL = (
    "string",
    "number",
    "temporal",
    "boolean",
    "interval",
    "null",
)
TEXT = "text literal"  # a string literal: compared with strings only
# the parts DATE_TRUNC and EXTRACT take (DuckDB's names); anything else would fail
# only when a row reaches it, which would make success or failure an oracle
DATE_PARTS = frozenset(
    {
        "millennium", "century", "decade", "year", "quarter", "month", "week", "day",
        "dayofweek", "dow", "dayofyear", "doy", "isodow", "isoyear", "yearweek", "hour",
        "minute", "second", "millisecond", "microsecond", "epoch",
    }
)  # fmt: skip
INTERVAL_UNITS = frozenset(
    {"year", "month", "week", "day", "hour", "minute", "second", "millisecond", "microsecond"}
)
Resolve = Callable[[exp.Column], str]


def _unify(nodes: list[exp.Expr], resolve: Resolve, what: exp.Expr) -> str:
    """The common family of values that DuckDB will compare or combine.

    A string literal meets strings only: next to a timestamp, number or
    boolean DuckDB converts it when a row reaches it, so a literal that does
    not convert ('x') fails only for the rows a CASE or filter lets through,
    an oracle. Write ``TIMESTAMP '...'`` (a cast, which runs as TRY_CAST)."""
    families = {family(n, resolve) for n in nodes} - {NULL}
    if TEXT in families:
        families = (families - {TEXT}) | {STRING}
    if len(families) > 1:
        raise PolicyError(
            f"{' and '.join(sorted(families))} values meet here, so DuckDB would convert "
            "one to the other when a row reaches it (a failed conversion can reveal data); "
            f"write a typed literal such as TIMESTAMP '2026-01-01' or cast explicitly: {sql(what)}"
        )
    return families.pop() if families else NULL


def _expect(node: exp.Expr, wanted: set[str], resolve: Resolve, what: exp.Expr) -> str:
    found = family(node, resolve)
    if found not in wanted | {NULL}:
        raise PolicyError(
            f"expected a {' or '.join(sorted(wanted))} value, not {found}: {sql(what)}"
        )
    return found


def condition(node: exp.Expr, resolve: Resolve) -> None:
    """A WHERE, HAVING, ON, FILTER or CASE condition must be boolean: DuckDB
    would otherwise convert each row's value to a boolean."""
    _expect(node, {BOOLEAN}, resolve, node)


def family(node: exp.Expr, resolve: Resolve) -> str:  # noqa: PLR0911, PLR0912 - one case per kind
    """The family of ``node``'s value; raises :class:`PolicyError` where
    DuckDB would convert a row's value implicitly."""
    if isinstance(node, (exp.Paren, exp.Alias, exp.Try)):
        return family(node.this, resolve)
    if isinstance(node, exp.Column):
        return resolve(node)
    if isinstance(node, exp.Literal):
        return TEXT if node.is_string else NUMBER
    if isinstance(node, exp.Boolean):
        return BOOLEAN
    if isinstance(node, exp.Null):
        return NULL
    if isinstance(node, exp.Interval):
        _interval(node)
        return INTERVAL
    if isinstance(node, (exp.Cast, exp.TryCast)):
        target = CAST_TYPES.get(node.to.this)
        if target is None or (node.to.expressions and node.to.this != exp.DataType.Type.DECIMAL):
            raise PolicyError(f"casts to {node.to.sql('duckdb')} are not allowed: {sql(node)}")
        family(node.this, resolve)
        return target
    if isinstance(node, COMPARISONS):
        _unify([node.this, node.expression], resolve, node)
        return BOOLEAN
    if isinstance(node, exp.In):
        _unify([node.this, *node.expressions], resolve, node)
        return BOOLEAN
    if isinstance(node, exp.Between):
        _unify([node.this, node.args["low"], node.args["high"]], resolve, node)
        return BOOLEAN
    if isinstance(node, (exp.Like, exp.ILike)):
        for part in (node.this, node.expression):
            _expect(part, {STRING, TEXT}, resolve, node)
        return BOOLEAN
    if isinstance(node, exp.Is):
        family(node.this, resolve)
        if not isinstance(node.expression, (exp.Null, exp.Boolean)):
            raise PolicyError(f"IS takes NULL, TRUE or FALSE: {sql(node)}")
        return BOOLEAN
    if isinstance(node, (exp.And, exp.Or)):
        condition(node.this, resolve)
        condition(node.expression, resolve)
        return BOOLEAN
    if isinstance(node, exp.Not):
        condition(node.this, resolve)
        return BOOLEAN
    if isinstance(node, exp.Neg):
        return _expect(node.this, {NUMBER, INTERVAL}, resolve, node)
    if isinstance(node, (exp.Add, exp.Sub)):
        return _additive(node, resolve)
    if isinstance(node, (exp.Mul, exp.Div, exp.Mod, exp.IntDiv)):
        _expect(node.this, {NUMBER}, resolve, node)
        _expect(node.expression, {NUMBER}, resolve, node)
        return NUMBER
    if isinstance(node, exp.Case):
        if node.this is not None:
            _unify([node.this, *(i.this for i in node.args["ifs"])], resolve, node)
        else:
            for branch in node.args["ifs"]:
                condition(branch.this, resolve)
        values = [i.args["true"] for i in node.args["ifs"]]
        default = node.args.get("default")
        return _unify([*values, *([default] if default is not None else [])], resolve, node)
    if isinstance(node, exp.If):
        condition(node.this, resolve)
        other = node.args.get("false")
        return _unify([node.args["true"], *([other] if other is not None else [])], resolve, node)
    if isinstance(node, (exp.Coalesce, exp.Greatest, exp.Least)):
        return _unify([node.this, *node.expressions], resolve, node)
    return _function(node, resolve)


def _number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _interval(node: exp.Interval) -> None:
    """A constant interval: a number and a unit DuckDB knows."""
    amount, unit = node.this, node.args.get("unit")
    unit_name = unit.name.lower().rstrip("s") if isinstance(unit, exp.Var) else ""
    if not (
        isinstance(amount, exp.Literal)
        and _number_text(amount.name)
        and unit_name in INTERVAL_UNITS
    ):
        raise PolicyError(
            f"an interval is a number and a unit, such as INTERVAL 1 DAY: {sql(node)}"
        )


def _part(node: exp.Expr, unit: exp.Expr | None) -> None:
    """The part of DATE_TRUNC or EXTRACT: a name DuckDB knows."""
    name = unit.name.lower() if isinstance(unit, (exp.Var, exp.Literal)) else ""
    if name not in DATE_PARTS:
        raise PolicyError(
            f"{name or 'this'} is not a date part ({', '.join(sorted(DATE_PARTS))}): {sql(node)}"
        )


def _additive(node: exp.Expr, resolve: Resolve) -> str:
    left, right = family(node.this, resolve), family(node.expression, resolve)
    pair = {left, right} - {NULL}
    if pair <= {NUMBER}:
        return NUMBER
    if pair == {TEMPORAL, INTERVAL} and right != TEMPORAL:
        return TEMPORAL
    if pair == {INTERVAL}:
        return INTERVAL
    if isinstance(node, exp.Sub) and pair == {TEMPORAL}:
        return INTERVAL
    raise PolicyError(f"arithmetic on {left} and {right} values is not allowed: {sql(node)}")


def _function(node: exp.Expr, resolve: Resolve) -> str:  # noqa: PLR0911 - one case per kind
    if isinstance(node, exp.Count):
        argument = node.this
        if isinstance(argument, exp.Distinct):
            for part in argument.expressions:
                family(part, resolve)
        elif not isinstance(argument, exp.Star):
            family(argument, resolve)
        return NUMBER
    if isinstance(node, (exp.Sum, exp.Avg)):
        _expect(node.this, {NUMBER}, resolve, node)
        return NUMBER
    if isinstance(node, (exp.Min, exp.Max)):
        return family(node.this, resolve)
    if isinstance(node, (exp.Abs, exp.Ceil, exp.Floor, exp.Round)):
        _expect(node.this, {NUMBER}, resolve, node)
        decimals = node.args.get("decimals")
        if decimals is not None and not (isinstance(decimals, exp.Literal) and decimals.is_int):
            raise PolicyError(f"ROUND takes a whole number of decimals: {sql(node)}")
        return NUMBER
    if isinstance(node, (exp.Year, exp.Month)):
        _expect(node.this, {TEMPORAL}, resolve, node)
        return NUMBER
    if isinstance(node, exp.Extract):
        _part(node, node.this)
        _expect(node.expression, {TEMPORAL}, resolve, node)
        return NUMBER
    if isinstance(node, (exp.DateTrunc, exp.TimestampTrunc)):
        _part(node, node.args.get("unit"))
        _expect(node.this, {TEMPORAL}, resolve, node)
        return TEMPORAL
    if isinstance(node, (exp.Lower, exp.Upper)):
        _expect(node.this, {STRING, TEXT}, resolve, node)
        return STRING
    raise PolicyError(f"{label(node)} has no value here: {sql(node)}")
