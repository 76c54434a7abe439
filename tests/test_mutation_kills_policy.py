"""Attacks on the policy check, the allow-list grammar, rule validation and the DP
mechanism that no other test made: each kills mutants of ``policy/check.py``,
``policy/grammar.py``, ``policy/rules.py`` or ``policy/dp.py`` that survived the
mutation run (docs/testing.md). The analyst writes the SQL and is the attacker;
each refusal is matched on the phrase of the one check that must make it."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sqlglot import exp

from cleanroom.errors import OperationalError, PolicyError
from cleanroom.policy import dp, grammar
from cleanroom.policy.check import Checked, Source, check_dp, check_query
from cleanroom.policy.rules import (
    AggregationRule,
    CustomRule,
    DpAggregate,
    DpSpec,
    ListRule,
)
from tests.test_policy import BANK_RULE, CUSTOMERS, LIST_CUSTOMERS, LISTS, SOURCES, _data


def test_a_row_query_is_refused() -> None:
    with pytest.raises(PolicyError, match="emits rows"):
        check_query("SELECT category FROM transactions", SOURCES)


# -- dp.py -------------------------------------------------------------------------------


def _dp_spec(*aggregates: dict[str, object], epsilon: float = 1.0, k: int = 2) -> DpSpec:
    return DpSpec.model_validate(
        {
            "epsilon": epsilon,
            "unit": "person",
            "max_contributions": k,
            "aggregates": list(aggregates),
        }
    )


SUM: dict[str, object] = {
    "name": "spend",
    "function": "sum",
    "column": "amount",
    "lower": -3,
    "upper": 100,
}
COUNT: dict[str, object] = {"name": "n", "function": "count"}
MEAN: dict[str, object] = {
    "name": "avg_spend",
    "function": "mean",
    "column": "amount",
    "lower": 0,
    "upper": 10,
}


def test_epsilon_is_split_over_exactly_the_statistics_released() -> None:
    # a sum alone needs no count: it gets the whole epsilon (a spare count would halve it)
    (only,) = dp.plan(_dp_spec(SUM, epsilon=0.6))
    assert (only.name, only.sensitivity, only.epsilon) == ("__sum_spend", 200.0, 0.6)
    # a count alone is one statistic
    (count,) = dp.plan(_dp_spec(COUNT, epsilon=0.6))
    assert (count.name, count.sensitivity, count.epsilon) == ("__count", 2.0, 0.6)
    # a mean is a noisy sum over a noisy count: two statistics
    names = [(s.name, s.epsilon) for s in dp.plan(_dp_spec(MEAN, epsilon=0.6))]
    assert names == [("__count", 0.3), ("__sum_avg_spend", 0.3)]
    released = dp.release(pa.table({"__count": [10.0], "__sum_avg_spend": [50.0]}), _dp_spec(MEAN))
    assert 0 <= released.column("avg_spend").to_pylist()[0] <= 10


def test_whole_bounds_clamp_an_integer_column_without_changing_its_type() -> None:
    # -3 % 2 and 101 % 2 are 1: only a whole-number test (% 1) keeps them integers
    spec = _dp_spec({**SUM, "lower": -3, "upper": 101})
    sql = dp.aggregate_sql("SELECT person, amount FROM t", spec)
    assert 'LEAST(GREATEST(r."amount", -3), 101)' in sql
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 'p' || i AS person, i::INT AS amount FROM range(10) r(i)")
    result = con.execute(sql)
    types = {d[0]: str(d[1]) for d in result.description}
    assert not types["__sum_spend"].startswith("DECIMAL"), types
    assert result.fetchall()[0][1] == 45
    # a fractional bound is a DECIMAL literal, never written with an exponent
    assert "2.5" in dp.aggregate_sql(
        "SELECT person, amount FROM t", _dp_spec({**SUM, "upper": 2.5})
    )


def test_a_miscalibrated_statistic_is_never_released() -> None:
    # the privacy map is checked against the share before release: noise at 2/3 of the
    # planned scale spends 1.5 times the epsilon share, and is refused
    class Miscalibrated(dp.Statistic):
        @property
        def scale(self) -> float:
            return self.sensitivity / (1.5 * self.epsilon)

    with pytest.raises(OperationalError, match="DP calibration failed for __sum_spend"):
        dp._measurement(Miscalibrated("__sum_spend", 200.0, 0.5))
    assert dp._measurement(dp.Statistic("__sum_spend", 200.0, 0.5)).map(200.0) <= 0.5 * (1 + 1e-9)


def test_a_joined_row_query_is_computed_once_and_a_plain_scan_is_repeated() -> None:
    spec = _dp_spec(SUM)
    plain = dp.aggregate_sql("SELECT person, amount FROM t", spec)
    assert "__cleanroom_rows AS NOT MATERIALIZED (" in plain
    joined = dp.aggregate_sql(
        "SELECT t.person, t.amount FROM t JOIN u ON t.person = u.person", spec
    )
    assert "__cleanroom_rows AS MATERIALIZED (" in joined


def test_a_declared_key_with_no_rows_is_released_as_noise_around_zero() -> None:
    # an absent group is an exact 0 before noise: any other start would tell the
    # analyst which keys had no rows. At epsilon 10 and bounds [0, 1] the noise has
    # scale 0.1, so 200 releases average within 0.05 of the exact value.
    spec = DpSpec.model_validate(
        {
            "epsilon": 10,
            "unit": "person",
            "group_by": {"segment": ["present", "absent"]},
            "aggregates": [
                {"name": "spend", "function": "sum", "column": "amount", "lower": 0, "upper": 1}
            ],
        }
    )
    exact = pa.table({"segment": ["present"], "__sum_spend": [5.0]})
    releases = [dp.release(exact, spec).to_pylist() for _ in range(200)]
    assert all([r["segment"] for r in rows] == ["present", "absent"] for rows in releases)
    present = sum(rows[0]["spend"] for rows in releases) / len(releases)
    absent = sum(rows[1]["spend"] for rows in releases) / len(releases)
    assert present == pytest.approx(5.0, abs=0.05)
    assert absent == pytest.approx(0.0, abs=0.05)


def test_a_mean_of_one_contribution_divides_by_the_noisy_count_floored_at_one() -> None:
    # the floor of 1 only keeps a tiny noisy count from blowing the mean up; a higher
    # floor would bias small groups' means (one person, value 1: about 0.87, never 0.5)
    spec = _dp_spec({**MEAN, "upper": 1}, epsilon=10, k=1)
    exact = pa.table({"__count": [1.0], "__sum_avg_spend": [1.0]})
    means = [dp.release(exact, spec).to_pylist()[0]["avg_spend"] for _ in range(200)]
    assert all(0 <= m <= 1 for m in means)
    assert sum(means) / len(means) > 0.75


# -- rules.py ----------------------------------------------------------------------------


def _aggregation(**change: object) -> dict[str, object]:
    return {**BANK_RULE.model_dump(), **change}


def test_a_threshold_is_at_least_one_person_and_one_person_is_a_threshold() -> None:
    assert AggregationRule.model_validate(_aggregation(min_distinct=1)).min_distinct == 1
    assert CustomRule.model_validate({"type": "custom", "min_distinct": 1}).min_distinct == 1
    for model, rule in (
        (AggregationRule, _aggregation(min_distinct=0)),
        (CustomRule, {"type": "custom", "min_distinct": 0}),
    ):
        with pytest.raises(ValidationError, match="greater than or equal to 1"):
            model.model_validate(rule)


def test_an_allowance_or_a_list_rule_naming_no_column_is_refused() -> None:
    empty = _aggregation(aggregates=[{"function": "sum", "columns": []}])
    with pytest.raises(ValidationError, match="at least 1 item"):
        AggregationRule.model_validate(empty)
    with pytest.raises(ValidationError, match="at least 1 item"):
        ListRule.model_validate({"type": "list", "list_columns": []})


def test_an_aggregation_rule_allows_exactly_its_function_column_pairs() -> None:
    assert BANK_RULE.allows("sum", "amount")
    assert BANK_RULE.allows("count_distinct", "customer_hash")
    assert not BANK_RULE.allows("sum", "customer_hash")  # the column of another allowance
    assert not BANK_RULE.allows("max", "amount")  # a function allowed on other columns
    assert not BANK_RULE.allows("sum", "category")


@pytest.mark.parametrize(
    "extra", [{"column": "amount"}, {"lower": 0}, {"upper": 10}, {"lower": 0, "upper": 10}]
)
def test_a_dp_count_with_a_column_or_a_bound_is_refused(extra: dict[str, object]) -> None:
    # a count with a "column" would be released as if that column's values were counted
    with pytest.raises(ValidationError, match="a DP count takes no column or bounds"):
        DpAggregate.model_validate({**COUNT, **extra})


def test_a_dp_count_has_no_clamping_bounds() -> None:
    with pytest.raises(ValueError, match="a DP count has no bounds"):
        _ = DpAggregate.model_validate(COUNT).bounds
    assert DpAggregate.model_validate(SUM).bounds == (-3.0, 100.0)


@pytest.mark.parametrize("missing", ["column", "lower", "upper"])
@pytest.mark.parametrize("function", ["sum", "mean"])
def test_a_dp_sum_or_mean_without_a_column_or_a_bound_is_refused(
    function: str, missing: str
) -> None:
    # unclamped values have no sensitivity: one person could move a sum without limit
    aggregate = {k: v for k, v in {**SUM, "function": function}.items() if k != missing}
    with pytest.raises(ValidationError, match=f"a DP {function} needs a column and clamping"):
        DpAggregate.model_validate(aggregate)


def test_a_negative_delta_is_refused() -> None:
    # pure DP: delta is exactly 0, neither above nor below
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        _dp_spec(COUNT).model_validate({**_dp_spec(COUNT).model_dump(), "delta": -0.1})


# -- check.py ----------------------------------------------------------------------------


def test_sql_that_does_not_parse_is_refused_naming_the_first_line_of_the_parse_error() -> None:
    # the first line says where the text stops parsing; the second quotes the text back
    with pytest.raises(
        PolicyError, match=r"^the analysis is not valid SQL: Expecting \)\. Line 1, Col: \d+\.$"
    ):
        check_query("SELECT (1 FROM transactions", SOURCES)


def test_a_dp_spec_that_names_no_contribution_bound_bounds_each_person_to_one_row() -> None:
    spec = DpSpec.model_validate({"epsilon": 1, "unit": "person", "aggregates": [COUNT, SUM]})
    assert spec.max_contributions == 1
    count, total = dp.plan(spec)
    assert (count.sensitivity, total.sensitivity) == (1.0, 100.0)
    assert "HAVING COUNT(*) > 1)" in dp.aggregate_sql("SELECT person, amount FROM t", spec)


def test_the_contribution_bound_may_be_one_row_and_not_zero() -> None:
    assert _dp_spec(COUNT, k=1).max_contributions == 1
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        _dp_spec(COUNT, k=0)


def test_ctes_shadowing_inputs_are_refused_naming_the_first_in_order() -> None:
    # a CTE named like an input would be read in its place; the refusal names one
    # shadowed input, always the same one
    sql = (
        "WITH transactions AS (SELECT category FROM customers), "
        "customers AS (SELECT segment FROM transactions) "
        "SELECT COUNT(*) FROM transactions"
    )
    with pytest.raises(PolicyError, match="a CTE may not take the name of an input: 'customers'"):
        check_query(sql, SOURCES)


def test_a_dp_spec_releasing_nothing_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        DpSpec.model_validate({"epsilon": 1, "unit": "person", "aggregates": []})


JOINED = "SELECT COUNT(*) FROM transactions t JOIN customers c ON t.customer_hash = c.customer_hash"


@pytest.mark.parametrize(
    ("customers_rule", "named"),
    [(None, r"\(aggregation, no rule\)$"), (LIST_CUSTOMERS, r"\(aggregation, list\)$")],
)
def test_datasets_under_different_kinds_of_rule_cannot_meet(
    customers_rule: ListRule | None, named: str
) -> None:
    # a dataset without a rule (or under a list rule) joined to an aggregation-rule
    # dataset would otherwise lend it its rows; the refusal names every kind that met
    sources = {
        "transactions": SOURCES["transactions"],
        "customers": Source("customers", CUSTOMERS, customers_rule, owner_approved=True),
    }
    with pytest.raises(PolicyError, match="cannot meet in one query " + named):
        check_query(JOINED, sources)


@pytest.mark.parametrize(
    "change",
    [
        {"aggregates": [COUNT, {**SUM, "name": "N"}]},  # two outputs named n
        {"group_by": {"seg": ["a"], "SEG": ["b"]}, "aggregates": [COUNT]},  # two keys named seg
        {"group_by": {"n": ["a"]}, "aggregates": [COUNT]},  # a key named like an aggregate
    ],
)
def test_dp_output_names_are_distinct_without_regard_to_case(change: dict[str, object]) -> None:
    # DuckDB compares names without regard to case: two outputs of one name would
    # release one in the other's place
    with pytest.raises(ValidationError, match="DP output names must be distinct"):
        DpSpec.model_validate({"epsilon": 1, "unit": "person", **change})


@pytest.mark.parametrize("clause", ["LIMIT 1.5", "LIMIT -1", "LIMIT 1 OFFSET '1'", "LIMIT NULL"])
def test_limit_and_offset_take_whole_numbers_only(clause: str) -> None:
    sql = f"SELECT category, COUNT(*) FROM transactions GROUP BY category {clause}"
    refused = "OFFSET" if "OFFSET" in clause else "LIMIT"
    with pytest.raises(PolicyError, match=f"{refused} takes a whole number"):
        check_query(sql, SOURCES)


@pytest.mark.parametrize(
    "on",
    [
        # a column equal to itself links nothing: the join would stand on the other part
        "ON t.customer_hash = c.customer_hash AND c.customer_hash = c.customer_hash",
        # a table not joined yet: the condition cannot be evaluated where it stands
        "ON c.customer_hash = t2.customer_hash JOIN transactions t2 "
        "ON t2.customer_hash = t.customer_hash",
    ],
)
def test_a_join_condition_compares_two_tables_already_in_the_join(on: str) -> None:
    sql = f"SELECT COUNT(*) FROM transactions t JOIN customers c {on}"
    with pytest.raises(PolicyError, match="a join condition compares columns of two tables"):
        check_query(sql, SOURCES)


@pytest.mark.parametrize(
    ("sources", "select", "kind"),
    [(SOURCES, "COUNT(*)", "aggregation"), (LISTS, "t.category", "list")],
)
def test_a_join_on_an_undeclared_column_is_refused_naming_the_rule(
    sources: dict[str, Source], select: str, kind: str
) -> None:
    # joining on a dimension (category = segment) would match rows on a value the owner
    # never offered for matching
    sql = f"SELECT {select} FROM transactions t JOIN customers c ON t.category = c.segment"
    with pytest.raises(
        PolicyError,
        match=f"join on 'category', which is not a declared join column of 'transactions' "
        rf"\({kind} rule\)",
    ):
        check_query(sql, sources)


@pytest.mark.parametrize(
    "sql",
    [
        # a filter on an aggregate is HAVING in disguise, run before the threshold
        "SELECT category, COUNT(*) FROM transactions WHERE SUM(amount) > 10 GROUP BY category",
        "SELECT category, COUNT(*) FROM transactions WHERE COUNT(*) > 10 GROUP BY category",
        # grouping by an aggregate is not a group of people
        "SELECT COUNT(*) FROM transactions GROUP BY SUM(amount)",
    ],
)
def test_aggregates_in_where_or_group_by_are_refused(sql: str) -> None:
    with pytest.raises(PolicyError, match="aggregates are not allowed here"):
        check_query(sql, SOURCES)


def test_refusals_quote_short_expressions_in_full_and_long_ones_cut() -> None:
    with pytest.raises(PolicyError, match=r"lists it\): MD5\(category\)$"):
        check_query("SELECT md5(category) FROM transactions", SOURCES)
    with pytest.raises(PolicyError) as caught:
        check_query(f"SELECT md5('{'x' * 300}') FROM transactions", SOURCES)
    quoted = str(caught.value).split("lists it): ", 1)[1]
    assert len(quoted) == 120
    assert quoted == "MD5('" + "x" * 112 + "..."


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT category, COUNT(*) AS n FROM transactions GROUP BY ALL ORDER BY 1",
        "SELECT category, COUNT(*) AS n FROM transactions GROUP BY category ORDER BY 1",
    ],
)
def test_group_by_all_groups_by_the_outputs_that_are_not_aggregates(sql: str) -> None:
    # GROUP BY ALL is expanded to the plain outputs before the threshold is applied
    # per group; an explicit GROUP BY is kept as written
    assert _data().execute(check_query(sql, SOURCES).sql).fetchall() == [
        ("grocery", 90),
        ("travel", 90),
    ]  # the yacht group (one person) is suppressed


def test_a_group_by_key_that_is_not_output_still_groups() -> None:
    sql = "SELECT COUNT(*) AS n FROM transactions GROUP BY category ORDER BY 1"
    assert _data().execute(check_query(sql, SOURCES).sql).fetchall() == [(90,), (90,)]


# -- grammar.py ---------------------------------------------------------------------------


def _wide(nodes: int) -> exp.Expr:
    """A tree of exactly ``nodes`` nodes: x IN (1, 2, ...)."""
    tree = exp.In(
        this=exp.column("x"), expressions=[exp.Literal.number(i) for i in range(nodes - 3)]
    )
    assert len(list(tree.walk())) == nodes
    return tree


def _deep(levels: int) -> exp.Expr:
    """A chain of ``levels`` parentheses below the root: depth ``levels``."""
    tree: exp.Expr = exp.Null()
    for _ in range(levels):
        tree = exp.Paren(this=tree)
    return tree


def test_the_node_bound_is_exactly_max_nodes() -> None:
    grammar.bounded(_wide(grammar.MAX_NODES))
    with pytest.raises(PolicyError, match="too large to check"):
        grammar.bounded(_wide(grammar.MAX_NODES + 1))


def test_the_depth_bound_is_exactly_max_depth() -> None:
    grammar.bounded(_deep(grammar.MAX_DEPTH))
    with pytest.raises(PolicyError, match="nests too deeply"):
        grammar.bounded(_deep(grammar.MAX_DEPTH + 1))


def test_an_approved_custom_query_without_threshold_runs_as_written_with_none() -> None:
    custom = CustomRule.model_validate({"type": "custom"})
    sources = {"customers": Source("customers", CUSTOMERS, custom, owner_approved=True)}
    checked = check_query("SELECT email AS contact, segment FROM customers", sources)
    assert checked == Checked(
        "SELECT email AS contact, segment FROM customers", "custom", 0, ["contact", "segment"]
    )


def test_a_comparison_converting_a_combined_value_is_refused() -> None:
    # COALESCE of strings is a string: compared with a number, DuckDB would convert each
    # row's category and its conversion error would quote the value
    sql = "SELECT COUNT(*) FROM transactions WHERE COALESCE(category, category) = 1"
    with pytest.raises(PolicyError, match="number and string values meet here"):
        check_query(sql, SOURCES)


def test_a_cast_to_a_decimal_with_precision_and_scale_is_accepted() -> None:
    sql = "SELECT category, CAST(SUM(amount) AS DECIMAL(10, 2)) AS s FROM transactions GROUP BY 1"
    assert "TRY_CAST(" in check_query(sql, SOURCES).sql


def test_is_takes_only_null_true_or_false() -> None:
    # IS 'x' would compare each row's value with a converted literal
    with pytest.raises(PolicyError, match="IS takes NULL, TRUE or FALSE"):
        check_query("SELECT COUNT(*) FROM transactions WHERE category IS 'x'", SOURCES)


def test_both_branches_of_if_must_agree() -> None:
    # IF without ELSE is accepted; an ELSE of another family would make DuckDB convert
    accepted = "SELECT COUNT(*) FROM transactions WHERE IF(category = 'a', 1) = 1"
    assert check_query(accepted, SOURCES).sql
    refused = "SELECT COUNT(*) FROM transactions WHERE IF(category = 'a', 1, category) = 1"
    with pytest.raises(PolicyError, match="number and string values meet here"):
        check_query(refused, SOURCES)


def test_an_unknown_date_part_is_refused_by_name() -> None:
    # DuckDB would fail only when a row reaches it: failure would be an oracle
    sql = "SELECT DATE_TRUNC('fortnight', ts) AS d, COUNT(*) FROM transactions GROUP BY 1"
    with pytest.raises(PolicyError, match="fortnight is not a date part"):
        check_query(sql, SOURCES)


WHERE = "SELECT COUNT(*) FROM transactions WHERE "


@pytest.mark.parametrize(
    "condition",
    [
        "ts + INTERVAL 1 DAY > TIMESTAMP '2026-01-01'",  # temporal + interval: temporal
        "ts - INTERVAL 1 DAY > TIMESTAMP '2026-01-01'",  # temporal - interval: temporal
        "ts - ts > INTERVAL 1 DAY",  # temporal - temporal: interval
        "ts > TIMESTAMP '2026-01-01' + (INTERVAL 1 DAY + INTERVAL 2 DAY)",  # interval sums
    ],
)
def test_date_arithmetic_has_the_family_duckdb_gives_it(condition: str) -> None:
    assert check_query(WHERE + condition, SOURCES).sql


@pytest.mark.parametrize(
    ("condition", "refusal"),
    [
        # DuckDB would convert these per row, or fail on the types: both refused up front
        ("INTERVAL 1 DAY + ts > TIMESTAMP '2026-01-01'", "arithmetic on interval and temporal"),
        ("ts + ts > TIMESTAMP '2026-01-01'", "arithmetic on temporal and temporal"),
        ("ts + 1 > TIMESTAMP '2026-01-01'", "arithmetic on temporal and number"),
        ("ts - 1 > TIMESTAMP '2026-01-01'", "arithmetic on temporal and number"),
        ("ts - ts > 1", "interval and number values meet here"),
    ],
)
def test_date_arithmetic_duckdb_would_convert_is_refused(condition: str, refusal: str) -> None:
    with pytest.raises(PolicyError, match=refusal):
        check_query(WHERE + condition, SOURCES)


@pytest.mark.parametrize(("decimals", "accepted"), [("", True), (", 2", True), (", 1.5", False)])
def test_round_takes_a_whole_number_of_decimals(decimals: str, accepted: bool) -> None:
    sql = f"SELECT category, ROUND(SUM(amount){decimals}) AS s FROM transactions GROUP BY 1"
    if accepted:
        assert check_query(sql, SOURCES).sql
    else:
        with pytest.raises(PolicyError, match="ROUND takes a whole number of decimals"):
            check_query(sql, SOURCES)


def test_a_keyword_standing_where_a_value_should_be_is_refused() -> None:
    # ORDER BY ALL parses as a bare keyword: it has no family, so it is not accepted
    sql = "SELECT COUNT(*) FROM transactions GROUP BY category ORDER BY ALL"
    with pytest.raises(PolicyError, match="Var has no value here: ALL"):
        check_query(sql, SOURCES)


def test_a_released_count_is_never_negative_and_can_be_zero() -> None:
    # an empty group's count is noise around 0, rounded and floored at 0 (post-processing)
    spec = _dp_spec(COUNT, epsilon=0.1, k=1)  # noise scale 10
    counts = [
        dp.release(pa.table({"__count": [0.0]}), spec).to_pylist()[0]["n"] for _ in range(200)
    ]
    assert min(counts) == 0
    assert all(isinstance(c, int) for c in counts)


def test_a_mean_over_a_negative_noisy_count_stays_within_its_bounds() -> None:
    # an empty group's noisy count is negative about half the time: the mean divides by
    # at least 1, never by 0 or a negative count
    spec = _dp_spec(MEAN, epsilon=0.1, k=1)
    exact = pa.table({"__count": [0.0], "__sum_avg_spend": [0.0]})
    means = [dp.release(exact, spec).to_pylist()[0]["avg_spend"] for _ in range(200)]
    assert all(0 <= m <= 10 for m in means)


# -- each structural refusal in its own words (a later check would refuse most of these
#    queries too: the exact phrase says which check fired) ------------------------------


@pytest.mark.parametrize(
    ("sql", "phrase"),
    [
        (
            "SELECT count(*) FROM transactions WHERE 1 = 1" + " " * 20_000,
            r"^an analysis is SQL text of at most 16384 characters$",
        ),
        (
            "SELECT count(*) FROM " + "(" * 3_000 + "SELECT 1" + ")" * 3_000,
            r"^the analysis nests too deeply to check$|^the analysis is not valid SQL",
        ),
        ("SELECT count(*) FROM read_csv('x.csv')", r"^table functions are not allowed: "),
        (
            "SELECT count(*) FROM transactions WHERE nosuch = 1",
            r"^the analysis does not resolve: Column 'nosuch' could not be resolved\. Line: 1",
        ),
        (
            "SELECT count(*) FROM (WITH t AS (SELECT * FROM transactions) SELECT * FROM t) AS x",
            r"^WITH is allowed only at the start of the query: ",
        ),
    ],
)
def test_each_structural_refusal_names_its_check(sql: str, phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_query(sql, SOURCES)


def test_text_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"^an analysis is SQL text of at most"):
        check_query(b"SELECT 1", SOURCES)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sql", "phrase"),
    [
        ("SELECT count(*)", r"^an analysis must read at least one of its inputs$"),
        # a CTE read before it is defined (or by itself) is no input and no earlier CTE
        (
            "WITH a AS (SELECT count(*) AS n FROM b), b AS (SELECT category FROM transactions) "
            "SELECT sum(n) FROM a",
            r"^'b' is not an input or an earlier CTE$",
        ),
        (
            "WITH a AS (SELECT count(*) AS n FROM a) "
            "SELECT count(*) FROM transactions t JOIN a ON t.txn_id = a.n",
            r"^'a' is not an input or an earlier CTE$",
        ),
        # a name with a line break: the refusal quotes the first line of the resolver's error
        (
            'SELECT count(*) FROM transactions WHERE "no\nsuch" = 1',
            r"^the analysis does not resolve: Column 'no$",
        ),
        (
            "WITH s AS (SELECT 1 AS x) SELECT count(*) FROM transactions, s",
            r'^every SELECT must read from an input or a CTE: SELECT 1 AS "x"$',
        ),
        (
            "WITH t AS (SELECT category FROM transactions) "
            "SELECT count(*) FROM t AS a JOIN t AS b ON a.category = b.category",
            r"^every CTE must be read exactly once; 't' is read 2 times ",
        ),
        (
            "WITH t AS (SELECT category FROM transactions) SELECT count(*) FROM transactions",
            r"^every CTE must be read exactly once; 't' is read 0 times ",
        ),
        (
            "WITH t AS (SELECT category FROM transactions), t AS (SELECT category FROM "
            "transactions) SELECT count(*) FROM t",
            r"^the CTE name 't' is used twice$",
        ),
        (
            "SELECT count(*) FROM transactions t0 "
            + " ".join(
                f"JOIN transactions t{i} ON t{i - 1}.customer_hash = t{i}.customer_hash"
                for i in range(1, 17)
            ),
            r"^a SELECT reads at most 16 tables$",
        ),
        (
            "SELECT category, count(*) FROM transactions t OUTER JOIN customers c "
            "ON t.customer_hash = c.customer_hash GROUP BY category",
            r"^write LEFT, RIGHT or FULL for outer joins: OUTER JOIN ",
        ),
        (
            "SELECT count(*) FROM transactions t JOIN customers c ON t.customer_hash = "
            "c.customer_hash JOIN customers d ON t.customer_hash = c.customer_hash",
            r"^the join condition does not mention 'd': JOIN ",
        ),
        (
            "SELECT DISTINCT category, count(*) FROM transactions GROUP BY category",
            r"^SELECT DISTINCT emits rows; use GROUP BY: SELECT DISTINCT ",
        ),
        (
            "SELECT category, count(sum(amount)) FROM transactions GROUP BY category",
            r'^aggregates cannot be nested: COUNT\(SUM\("transactions"\."amount"\)\)$',
        ),
        (
            "SELECT count(*) FROM transactions WHERE count(*) > 1",
            r"^aggregates are not allowed here: COUNT\(\*\) > 1$",
        ),
        (
            "WITH g AS (SELECT category, count(*) AS n FROM transactions GROUP BY category) "
            "SELECT sum(n) FROM g WHERE count(*) > 1",
            r"^aggregates are not allowed here: COUNT\(\*\) > 1$",
        ),
        (
            "SELECT category, count(*) FROM transactions GROUP BY ALL HAVING nosuch > 1",
            r"^'nosuch' names no column or output here$",
        ),
        (
            "WITH g AS (SELECT category, count(*) AS n FROM transactions GROUP BY category) "
            "SELECT DISTINCT n FROM g",
            r"^use GROUP BY instead of SELECT DISTINCT: WITH ",
        ),
        (
            "WITH g AS (SELECT category, count(*) AS n FROM transactions GROUP BY category) "
            "SELECT sum(n + 1) AS s FROM g",
            r'^aggregates over groups take one plain column: SUM\("g"\."n" \+ 1\)$',
        ),
        (
            "WITH g AS (SELECT category, count(*) AS n FROM transactions GROUP BY category) "
            "SELECT count(DISTINCT n) AS s FROM g",
            r'^aggregates over groups take one plain column: COUNT\(DISTINCT "g"\."n"\)$',
        ),
        ("SELECT sum(*) FROM transactions", r"^\* is allowed in COUNT\(\*\) only: SUM\(\*\)$"),
        (
            "SELECT category AS x, count(*) AS x FROM transactions GROUP BY category",
            r"^two output columns are named 'x'$",
        ),
        (
            "SELECT amount, count(*) FROM transactions GROUP BY amount",
            r"^transactions\.amount is not a dimension of its aggregation rule: it may appear "
            r'only inside an allowed aggregate: "transactions"\."amount" AS "amount"$',
        ),
        (
            "SELECT category, 3 AS x, count(*) FROM transactions GROUP BY 2",
            r'^"transactions"\."category" must be a GROUP BY expression or inside an aggregate$',
        ),
        (
            "SELECT upper(category), count(*) FROM transactions GROUP BY category",
            r"^function upper is not allowed by the rules of the datasets queried "
            r"\(allowed: date_trunc, month, round, year\): ",
        ),
        (
            "SELECT count(DISTINCT amount) FROM transactions",
            r"^count_distinct on transactions\.amount is not allowed by its aggregation rule: ",
        ),
    ],
)
def test_each_refusal_of_the_aggregation_check_names_its_check(sql: str, phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_query(sql, SOURCES)


@pytest.mark.parametrize(
    ("sql", "phrase"),
    [
        (
            "SELECT DISTINCT s.segment FROM (SELECT c.segment FROM customers c) AS s",
            r"^a query under list rules is one SELECT, with no CTEs or subqueries$",
        ),
        (
            "SELECT DISTINCT c.segment FROM customers c JOIN transactions t "
            "ON c.customer_hash = t.customer_hash WHERE upper(c.segment) = 'A'",
            r"^function upper is not allowed by the rules of the datasets queried "
            r"\(allowed: none\): ",
        ),
        (
            "SELECT DISTINCT segment FROM customers GROUP BY segment",
            r"^list rules output rows, not aggregates: ",
        ),
        (
            "SELECT DISTINCT c.email FROM customers c JOIN transactions t "
            "ON c.customer_hash = t.customer_hash",
            r'^customers\.email is not a list column of its list rule: "c"\."email" AS "email"$',
        ),
    ],
)
def test_each_refusal_of_the_list_check_names_its_check(sql: str, phrase: str) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_query(sql, LISTS)


def test_a_failure_inside_the_check_is_a_refusal_naming_only_its_kind() -> None:
    # a source that is not a Source (a caller's bug) makes the check itself fail
    broken = {"transactions": object()}
    with pytest.raises(
        PolicyError, match=r"^the analysis could not be checked, so it is refused \(\w+Error\)$"
    ):
        check_query("SELECT count(*) FROM transactions", broken)  # type: ignore[arg-type]


# -- integer constants in GROUP BY and ORDER BY: qualify() has expanded every position, so
#    what is left is a constant, never a position (DuckDB would read it as one) -------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT 5 AS x, category, count(*) AS n FROM transactions GROUP BY ALL",
            [(5, "grocery", 90), (5, "travel", 90)],
        ),
        (
            "SELECT 2 AS x, category, count(*) AS n FROM transactions GROUP BY ALL",
            [(2, "grocery", 90), (2, "travel", 90)],
        ),
        (
            "SELECT category, 3 AS x, count(*) AS n FROM transactions GROUP BY 1, 2",
            [("grocery", 3, 90), ("travel", 3, 90)],
        ),
        (
            "SELECT 3 AS x, category, count(*) AS n FROM transactions GROUP BY category "
            "ORDER BY 1, 2",
            [(3, "grocery", 90), (3, "travel", 90)],
        ),
        ("SELECT 1 AS one, count(*) AS n FROM transactions GROUP BY 1", [(1, 181)]),
        # in parentheses or negated, DuckDB may still read an integer as a position
        (
            "SELECT category, count(*) AS n FROM transactions GROUP BY category, (2) "
            "ORDER BY (2), -1",
            [("grocery", 90), ("travel", 90)],
        ),
        (
            "SELECT 7 AS x, count(*) AS n FROM transactions GROUP BY (1) ORDER BY (1)",
            [(7, 181)],
        ),
    ],
)
def test_integer_constants_group_and_order_by_nothing(
    sql: str, expected: list[tuple[object, ...]]
) -> None:
    checked = check_query(sql, SOURCES)
    rows = _data().execute(checked.sql).fetchall()
    assert sorted(rows, key=repr) == expected  # the one-customer yacht group is suppressed


def test_a_constant_alone_in_group_by_still_emits_rows_and_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"^every SELECT over protected data must aggregate"):
        check_query("SELECT 1 AS one FROM transactions GROUP BY 1", SOURCES)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # the outer SELECT re-aggregates released groups: a cast of its aggregate stays
        # outside TRY (DuckDB evaluates no aggregate inside TRY)
        (
            "WITH g AS (SELECT category, count(*) AS n FROM transactions GROUP BY category) "
            "SELECT CAST(sum(n) AS DOUBLE) + 1 AS x FROM g",
            [(181.0,)],
        ),
        (
            "SELECT category, CAST(count(*) AS DOUBLE) + 1 AS x FROM transactions "
            "GROUP BY category",
            [("grocery", 91.0), ("travel", 91.0)],
        ),
    ],
)
def test_arithmetic_over_a_cast_aggregate_runs(
    sql: str, expected: list[tuple[object, ...]]
) -> None:
    rows = _data().execute(check_query(sql, SOURCES).sql).fetchall()
    assert sorted(rows, key=repr) == expected


THRESHOLD_CUSTOM = {
    "customers": Source(
        "customers",
        CUSTOMERS,
        CustomRule.model_validate({"type": "custom", "min_distinct": 2}),
        owner_approved=True,
    )
}


def test_a_custom_rule_with_a_threshold_groups_by_any_column_its_owner_approved() -> None:
    # a custom rule names no dimensions: every column of an approved text may be a key
    checked = check_query(
        "SELECT segment, region, COUNT(*) AS n FROM customers GROUP BY segment, region",
        THRESHOLD_CUSTOM,
    )
    assert (checked.mode, checked.threshold, checked.columns) == (
        "custom",
        2,
        ["segment", "region", "n"],
    )
    rows = _data().execute(checked.sql).fetchall()
    assert sorted(rows) == [
        ("a", "north", 6),
        ("a", "south", 6),
        ("b", "north", 6),
        ("b", "south", 6),
        ("c", "north", 3),
        ("c", "south", 2),
    ]  # vip (one person) is suppressed


def test_a_custom_rule_with_a_threshold_reads_an_input_once_per_select() -> None:
    with pytest.raises(PolicyError, match=r"^an input is read once per SELECT: "):
        check_query(
            "SELECT a.segment, COUNT(*) AS n FROM customers a JOIN customers b "
            "ON a.customer_hash = b.customer_hash GROUP BY a.segment",
            THRESHOLD_CUSTOM,
        )


def test_a_join_column_that_is_not_the_identity_is_used_in_joins_only() -> None:
    rule = BANK_RULE.model_copy(update={"join_columns": ["customer_hash", "txn_id"]})
    sources = {"transactions": Source("transactions", SOURCES["transactions"].schema, rule)}
    with pytest.raises(
        PolicyError,
        match=r"^join column transactions\.txn_id may be used only in join conditions: ",
    ):
        check_query("SELECT txn_id, COUNT(*) FROM transactions GROUP BY txn_id", sources)


def test_a_list_query_has_no_threshold() -> None:
    checked = check_query(
        "SELECT DISTINCT c.segment FROM customers c JOIN transactions t "
        "ON c.customer_hash = t.customer_hash",
        LISTS,
    )
    assert (checked.mode, checked.threshold, checked.columns) == ("list", 0, ["segment"])


def test_every_identity_an_outer_join_reads_is_counted_on_its_own_column() -> None:
    # a LEFT JOIN links nobody: the transactions side's people are counted on its own
    # identity, never on the customers' COUNT(DISTINCT) the analyst wrote
    sql = check_query(
        "SELECT c.segment, COUNT(DISTINCT c.customer_hash) AS p FROM customers c "
        "LEFT JOIN transactions t ON c.customer_hash = t.customer_hash GROUP BY c.segment",
        SOURCES,
        bounded=False,
    ).sql
    assert 'COUNT(DISTINCT "t"."customer_hash") >= 3' in sql
    assert 'COUNT(DISTINCT "c"."customer_hash") >= 3' in sql


def test_linked_follows_equalities_only_from_where_it_has_reached() -> None:
    from cleanroom.policy.check import _linked  # noqa: PLC0415 - the join graph walk

    edges = [(("t", "id"), ("c", "id"))]
    assert _linked(("t", "id"), ("c", "id"), edges)
    assert _linked(("c", "id"), ("t", "id"), edges)
    # a third table joined by an outer join is linked to neither
    assert not _linked(("d", "id"), ("c", "id"), edges)
    assert not _linked(("d", "id"), ("t", "id"), edges)
    chain = [*edges, (("c", "id"), ("d", "id"))]
    assert _linked(("t", "id"), ("d", "id"), chain)


class _Unreachable(Source):
    @property
    def protected(self) -> bool:
        raise RecursionError("a source too deep to read")


def test_a_recursion_inside_the_check_is_a_refusal() -> None:
    broken = {"customers": _Unreachable("customers", CUSTOMERS, LIST_CUSTOMERS)}
    with pytest.raises(PolicyError, match=r"^the analysis nests too deeply to check$"):
        check_query("SELECT DISTINCT segment FROM customers", broken)


def _count_spec(unit: str = "customer_hash") -> DpSpec:
    return DpSpec.model_validate(
        {"epsilon": 1.0, "unit": unit, "aggregates": [{"name": "n", "function": "count"}]}
    )


@pytest.mark.parametrize(
    ("sql", "sources", "unit", "phrase"),
    [
        (
            "SELECT customer_hash FROM transactions",
            LISTS,
            "customer_hash",
            r"^list rules allow no aggregates, differentially private or not$",
        ),
        (
            "SELECT customer_hash, count(*) AS c FROM transactions",
            SOURCES,
            "customer_hash",
            r"^a DP row query has no aggregates: the enclave aggregates$",
        ),
        (
            "SELECT category FROM transactions",
            SOURCES,
            "category",
            r"^the privacy unit 'category' must be an input's identity column$",
        ),
    ],
)
def test_each_refusal_of_the_dp_row_query_check_names_its_check(
    sql: str, sources: dict[str, Source], unit: str, phrase: str
) -> None:
    with pytest.raises(PolicyError, match=phrase):
        check_dp(sql, sources, _count_spec(unit))


def _spec(**change: object) -> DpSpec:
    base: dict[str, object] = {
        "epsilon": 1.0,
        "unit": "customer_hash",
        "aggregates": [{"name": "n", "function": "count"}],
    }
    return DpSpec.model_validate({**base, **change})


CUSTOM_BOTH = {
    name: Source(name, schema, CustomRule.model_validate({"type": "custom"}), owner_approved=True)
    for name, schema in (("customers", CUSTOMERS), ("transactions", SOURCES["transactions"].schema))
}
JOINABLE = {
    "transactions": Source(
        "transactions",
        SOURCES["transactions"].schema,
        BANK_RULE.model_copy(update={"join_columns": ["customer_hash", "category"]}),
    ),
    "customers": Source(
        "customers",
        CUSTOMERS,
        SOURCES["customers"].rule.model_copy(  # type: ignore[union-attr]
            update={"join_columns": ["customer_hash", "region"]}
        ),
    ),
}


def test_the_dp_check_refuses_what_its_spec_also_refuses_in_its_own_words() -> None:
    # the spec's own validation refuses both; the row query check must too, alone
    unit_summed = DpSpec.model_construct(
        **{
            **_spec().__dict__,
            "aggregates": [
                DpAggregate.model_validate(
                    {
                        "name": "customer_hash",
                        "function": "sum",
                        "column": "customer_hash",
                        "lower": 0,
                        "upper": 1,
                    }
                )
            ],
        }
    )
    with pytest.raises(
        PolicyError, match=r"^the privacy unit 'customer_hash' cannot be aggregated$"
    ):
        check_dp("SELECT customer_hash FROM transactions", SOURCES, unit_summed)
    with pytest.raises(PolicyError, match=r"^'__spend' is a name the DP mechanism reserves$"):
        check_dp("SELECT customer_hash, amount AS __spend FROM transactions", SOURCES, _spec())


def test_dp_row_query_outputs_are_plain_columns() -> None:
    spec = _spec(
        aggregates=[{"name": "spend", "function": "sum", "column": "spend", "lower": 0, "upper": 1}]
    )
    with pytest.raises(
        PolicyError,
        match=r'^DP row query outputs must be plain columns: "transactions"\."amount" \+ 1 AS ',
    ):
        check_dp("SELECT customer_hash, amount + 1 AS spend FROM transactions", SOURCES, spec)


def test_every_protected_input_is_joined_to_the_unit_on_its_identity() -> None:
    sql = "SELECT t.customer_hash FROM transactions t JOIN customers c ON t.category = c.region"
    with pytest.raises(
        PolicyError,
        match=r"^'customers' is not joined to the privacy unit on its identity column",
    ):
        check_dp(sql, JOINABLE, _spec())
    # custom rules bound nothing of their own: their owners approved this exact text
    assert check_dp(sql, CUSTOM_BOTH, _spec()).columns == ["customer_hash"]


def test_a_dp_row_query_over_custom_rules_groups_by_any_column() -> None:
    checked = check_dp(
        "SELECT customer_hash, segment FROM customers",
        CUSTOM_BOTH,
        _spec(group_by={"segment": ["a", "b"]}),
    )
    assert (checked.mode, checked.threshold, checked.columns) == (
        "dp",
        0,
        ["customer_hash", "segment"],
    )


def test_people_an_inner_join_makes_equal_are_counted_once_on_the_analysts_count() -> None:
    # t.customer_hash = c.customer_hash: the analyst's COUNT(DISTINCT c.customer_hash)
    # already counts everyone the threshold must count, so it is reused, not repeated
    sql = check_query(
        "SELECT c.segment, COUNT(DISTINCT c.customer_hash) AS p FROM transactions t "
        "JOIN customers c ON t.customer_hash = c.customer_hash GROUP BY c.segment",
        SOURCES,
    ).sql
    assert 'HAVING COUNT(DISTINCT "c"."customer_hash") >= 3' in sql
    assert 'COUNT(DISTINCT "t"."customer_hash")' not in sql


def test_a_dp_sum_over_a_column_that_is_no_number_is_refused() -> None:
    # a rule (mis)allowing sum over a text column does not make it summable
    allowance = BANK_RULE.aggregates[2].model_copy(update={"columns": ["category"]})
    rule = BANK_RULE.model_copy(update={"aggregates": [*BANK_RULE.aggregates, allowance]})
    sources = {"transactions": Source("transactions", SOURCES["transactions"].schema, rule)}
    spec = _spec(
        aggregates=[
            {"name": "category", "function": "sum", "column": "category", "lower": 0, "upper": 1}
        ]
    )
    with pytest.raises(PolicyError, match=r"^transactions\.category is not a number$"):
        check_dp("SELECT customer_hash, category FROM transactions", sources, spec)


def test_join_conditions_stay_as_written_so_the_engine_joins_by_hash() -> None:
    # only what can fail on a value runs in TRY: an equality of join columns cannot
    sql = check_query(
        "SELECT c.segment, COUNT(*) AS n FROM transactions t JOIN customers c "
        "ON t.customer_hash = c.customer_hash WHERE t.category = 'grocery' GROUP BY c.segment",
        SOURCES,
    ).sql
    assert 'ON "t"."customer_hash" = "c"."customer_hash"' in sql
    assert 'TRY("t"."category" = \'grocery\')' in sql


def test_no_sql_reads_a_model_whatever_its_rule() -> None:
    """A model asset among the inputs refuses the analysis, read or not, DP or not."""
    from cleanroom.datasets.schema import MODEL_SCHEMA  # noqa: PLC0415
    from tests.test_scoring_rules import _toy_outputs  # noqa: PLC0415

    model = Source(
        "toy",
        MODEL_SCHEMA,
        None,
        owner_approved=True,
        model=_toy_outputs(("label", "int64", ("batch",))),
    )
    sources = {**SOURCES, "toy": model}
    text = "SELECT category, COUNT(*) AS n FROM transactions GROUP BY category"
    assert check_query(text, SOURCES).sql  # the same query, without the model: fine
    for query in (text, "SELECT onnx FROM toy"):
        with pytest.raises(PolicyError, match=r"^'toy' is a model: SQL cannot read a model$"):
            check_query(query, sources)
    with pytest.raises(PolicyError, match="is a model"):
        check_dp("SELECT onnx FROM toy", sources, _dp_spec({"name": "n", "function": "count"}))
