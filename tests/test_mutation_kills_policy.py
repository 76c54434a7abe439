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
from cleanroom.policy.check import Checked, Source, check_query
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
