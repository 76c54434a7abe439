"""Analysis rules: a table of queries over two owners' datasets, each allowed
(with the shape of its output, thresholds enforced) or refused (with why)."""

from __future__ import annotations

import duckdb
import pytest

from cleanroom.datasets.schema import Schema
from cleanroom.errors import GovernanceError, PolicyError
from cleanroom.policy.check import ENGINE_SETTINGS, Source, check_query
from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule, check_rule

TRANSACTIONS = Schema.from_json(
    {
        "identity_column": "customer_hash",
        "columns": [
            {"name": "txn_id", "type": "int64", "nullable": False},
            {"name": "customer_hash", "type": "string", "nullable": False},
            {"name": "amount", "type": "decimal(12,2)"},
            {"name": "category", "type": "string"},
            {"name": "ts", "type": "timestamp"},
        ],
    }
)
CUSTOMERS = Schema.from_json(
    {
        "identity_column": "customer_hash",
        "columns": [
            {"name": "customer_hash", "type": "string", "nullable": False},
            {"name": "segment", "type": "string"},
            {"name": "region", "type": "string"},
            {"name": "age", "type": "int32"},
            {"name": "opted_in", "type": "boolean"},
            {"name": "email", "type": "string"},
        ],
    }
)
BANK_RULE = AggregationRule.model_validate(
    {
        "type": "aggregation",
        "aggregates": [
            {"function": "count_distinct", "columns": ["customer_hash"]},
            {"function": "count", "columns": ["txn_id", "amount"]},
            {"function": "sum", "columns": ["amount"]},
            {"function": "avg", "columns": ["amount"]},
            {"function": "min", "columns": ["ts"]},
            {"function": "max", "columns": ["ts"]},
        ],
        "dimensions": ["category", "ts"],
        "join_columns": ["customer_hash"],
        "scalar_functions": ["date_trunc", "year", "month", "round"],
        "min_distinct": 3,
        "column_thresholds": {"ts": 4},
    }
)
MERCHANT_RULE = AggregationRule.model_validate(
    {
        "type": "aggregation",
        "aggregates": [
            {"function": "count_distinct", "columns": ["customer_hash"]},
            {"function": "count", "columns": ["age"]},
            {"function": "avg", "columns": ["age"]},
        ],
        "dimensions": ["segment", "region", "opted_in"],
        "join_columns": ["customer_hash"],
        "scalar_functions": ["lower", "upper", "round", "date_trunc", "year", "month"],
        "min_distinct": 2,
    }
)
SOURCES = {
    "transactions": Source("transactions", TRANSACTIONS, BANK_RULE),
    "customers": Source("customers", CUSTOMERS, MERCHANT_RULE),
}

JOIN = "FROM transactions t JOIN customers c ON t.customer_hash = c.customer_hash"

# (query, expected columns, expected row count) -- with the data below:
# 30 customers; segments a (12), b (12), c (5), vip (1); regions north/south;
# 3 transactions each in grocery/travel; one customer also buys a yacht.
ALLOWED: dict[str, tuple[str, list[str], int]] = {
    "count per category": (
        "SELECT category, COUNT(*) AS n FROM transactions GROUP BY category",
        ["category", "n"],
        2,  # yacht (1 customer) is suppressed
    ),
    "sum per category": (
        "SELECT category, SUM(amount) AS total FROM transactions GROUP BY category",
        ["category", "total"],
        2,
    ),
    "avg per category": (
        "SELECT category, AVG(amount) AS mean FROM transactions GROUP BY category",
        ["category", "mean"],
        2,
    ),
    "distinct customers per category": (
        "SELECT category, COUNT(DISTINCT customer_hash) AS customers FROM transactions "
        "GROUP BY category",
        ["category", "customers"],
        2,
    ),
    "global count": ("SELECT COUNT(*) AS n FROM transactions", ["n"], 1),
    "global sum": ("SELECT SUM(amount) AS total FROM transactions", ["total"], 1),
    "join: spend per segment": (
        f"SELECT c.segment, SUM(t.amount) AS spend {JOIN} GROUP BY c.segment",
        ["segment", "spend"],
        3,  # vip (1 customer) suppressed
    ),
    "join with a filter on a dimension": (
        f"SELECT c.segment, COUNT(*) AS n {JOIN} WHERE c.region = 'north' GROUP BY c.segment",
        ["segment", "n"],
        3,
    ),
    "filters joined by AND": (
        "SELECT COUNT(*) AS n FROM transactions WHERE category = 'grocery' "
        "AND ts >= TIMESTAMP '2026-03-01'",
        ["n"],
        1,
    ),
    "filters joined by OR": (
        "SELECT category, COUNT(*) AS n FROM transactions "
        "WHERE category = 'grocery' OR category = 'yacht' GROUP BY category",
        ["category", "n"],
        1,  # yacht (1 customer) suppressed
    ),
    "filter on a category literal": (
        "SELECT COUNT(*) AS n FROM transactions WHERE category = 'grocery'",
        ["n"],
        1,
    ),
    "two dimensions": (
        f"SELECT c.segment, t.category, SUM(t.amount) AS spend {JOIN} "
        "GROUP BY c.segment, t.category",
        ["segment", "category", "spend"],
        6,
    ),
    "having on an aggregate": (
        "SELECT category, COUNT(*) AS n FROM transactions GROUP BY category HAVING COUNT(*) > 40",
        ["category", "n"],
        2,
    ),
    "top group by ORDER BY ... LIMIT 1": (
        "SELECT category, SUM(amount) AS s FROM transactions GROUP BY category "
        "ORDER BY SUM(amount) DESC LIMIT 1",
        ["category", "s"],
        1,
    ),
    "date_trunc on a dimension": (
        "SELECT date_trunc('month', ts) AS month, COUNT(*) AS n FROM transactions GROUP BY 1",
        ["month", "n"],
        1,
    ),
    "year of a dimension": (
        "SELECT year(ts) AS y, COUNT(*) AS n FROM transactions GROUP BY year(ts)",
        ["y", "n"],
        1,
    ),
    "round an aggregate": (
        "SELECT category, ROUND(AVG(amount), 2) AS mean FROM transactions GROUP BY category",
        ["category", "mean"],
        2,
    ),
    "CTE that aggregates, outer filter": (
        f"WITH s AS (SELECT c.segment, SUM(t.amount) AS total, COUNT(DISTINCT c.customer_hash) "
        f"AS n {JOIN} GROUP BY c.segment) SELECT segment, total FROM s WHERE n > 5",
        ["segment", "total"],
        2,
    ),
    "CTE that aggregates, outer sum of groups": (
        "WITH s AS (SELECT category, SUM(amount) AS total FROM transactions GROUP BY category) "
        "SELECT SUM(total) AS all_total FROM s",
        ["all_total"],
        1,
    ),
    "derived table that aggregates": (
        "SELECT * FROM (SELECT category, COUNT(*) AS n FROM transactions GROUP BY category) x "
        "WHERE n > 3",
        ["category", "n"],
        2,
    ),
    "CASE over a dimension": (
        "SELECT CASE WHEN region = 'north' THEN 'N' ELSE 'S' END AS half, COUNT(*) AS n "
        "FROM customers GROUP BY 1",
        ["half", "n"],
        2,
    ),
    "distinct customers per region": (
        "SELECT region, COUNT(DISTINCT customer_hash) AS n FROM customers GROUP BY region",
        ["region", "n"],
        2,
    ),
    "average age per segment": (
        "SELECT segment, AVG(age) AS age FROM customers GROUP BY segment",
        ["segment", "age"],
        3,
    ),
    "boolean dimension filter": (
        "SELECT region, COUNT(*) AS n FROM customers WHERE opted_in GROUP BY region",
        ["region", "n"],
        2,
    ),
    "lower() allowed by the only rule queried": (
        "SELECT lower(segment) AS s, COUNT(*) AS n FROM customers GROUP BY 1",
        ["s", "n"],
        3,
    ),
    "IN list on a dimension": (
        "SELECT COUNT(*) AS n FROM transactions WHERE category IN ('grocery', 'travel')",
        ["n"],
        1,
    ),
    "BETWEEN on a timestamp dimension": (
        "SELECT COUNT(*) AS n FROM transactions "
        "WHERE ts BETWEEN TIMESTAMP '2026-01-01' AND TIMESTAMP '2026-12-31'",
        ["n"],
        1,
    ),
    "min and max allowed by the rule": (
        "SELECT MIN(ts) AS first, MAX(ts) AS last FROM transactions",
        ["first", "last"],
        1,
    ),
    "count of a column": ("SELECT COUNT(amount) AS n FROM transactions", ["n"], 1),
    "cast of an aggregate": (
        "SELECT CAST(SUM(amount) AS BIGINT) AS total FROM transactions",
        ["total"],
        1,
    ),
    "arithmetic on aggregates": (
        "SELECT category, SUM(amount) / COUNT(*) AS mean FROM transactions GROUP BY category",
        ["category", "mean"],
        2,
    ),
    "left join on join columns": (
        "SELECT c.region, COUNT(t.txn_id) AS n FROM customers c LEFT JOIN transactions t "
        "ON c.customer_hash = t.customer_hash GROUP BY c.region",
        ["region", "n"],
        2,
    ),
    "comments and whitespace": (
        "-- spend\n/* by category */\nSELECT category, SUM(amount) AS s\nFROM transactions\n"
        "GROUP BY category",
        ["category", "s"],
        2,
    ),
    "order by a dimension": (
        "SELECT region, COUNT(*) AS n FROM customers GROUP BY region ORDER BY region",
        ["region", "n"],
        2,
    ),
    "global aggregate with HAVING": (
        "SELECT COUNT(*) AS n FROM customers HAVING COUNT(*) > 0",
        ["n"],
        1,
    ),
    "filter on a function of a dimension": (
        "SELECT COUNT(*) AS n FROM transactions WHERE date_trunc('month', ts) >= "
        "TIMESTAMP '2026-01-01'",
        ["n"],
        1,
    ),
    "average age of opted-in customers per region": (
        "SELECT region, AVG(age) AS age FROM customers WHERE opted_in GROUP BY region",
        ["region", "age"],
        2,
    ),
    "a tiny segment is suppressed, not flagged": (
        "SELECT segment, COUNT(*) AS n FROM customers WHERE segment = 'vip' GROUP BY segment",
        ["segment", "n"],
        0,
    ),
    "join USING a join column": (
        "SELECT COUNT(*) AS n FROM transactions JOIN customers USING (customer_hash)",
        ["n"],
        1,
    ),
    "natural join (only the join column is shared)": (
        "SELECT COUNT(*) AS n FROM transactions NATURAL JOIN customers",
        ["n"],
        1,
    ),
    "a literal label column": (
        "SELECT 'all' AS scope, COUNT(*) AS n FROM customers",
        ["scope", "n"],
        1,
    ),
}

REFUSED: dict[str, tuple[str, str]] = {
    "select star": ("SELECT * FROM transactions", "emits rows"),
    "group by the identity": (
        "SELECT customer_hash, SUM(amount) FROM transactions GROUP BY customer_hash",
        "identity column",
    ),
    "group by a near-unique column": (
        "SELECT txn_id, SUM(amount) FROM transactions GROUP BY txn_id",
        "not a dimension",
    ),
    "max of a value": ("SELECT MAX(amount) FROM transactions", "max on transactions.amount"),
    "min of the identity": ("SELECT MIN(customer_hash) FROM transactions", "min on"),
    "any_value": ("SELECT ANY_VALUE(customer_hash) FROM transactions", "not part of the SQL"),
    "first": ("SELECT category, FIRST(amount) FROM transactions GROUP BY 1", "aggregate first"),
    "arg_max": ("SELECT ARG_MAX(customer_hash, amount) FROM transactions", "aggregate arg_max"),
    "string_agg": (
        "SELECT STRING_AGG(customer_hash, ',') FROM transactions",
        "aggregate group_concat",
    ),
    "list": ("SELECT LIST(customer_hash) FROM transactions", "aggregate array_agg"),
    "median": ("SELECT MEDIAN(amount) FROM transactions", "aggregate median"),
    "quantile": ("SELECT QUANTILE_CONT(amount, 0.5) FROM transactions", "aggregate"),
    "mode": ("SELECT MODE(category) FROM transactions", "aggregate mode"),
    "histogram": ("SELECT histogram(amount) FROM transactions", "function histogram"),
    "order by value limit 1": (
        "SELECT amount FROM transactions ORDER BY amount DESC LIMIT 1",
        "emits rows",
    ),
    "row with its category": (
        "SELECT category, amount FROM transactions ORDER BY amount LIMIT 1",
        "emits rows",
    ),
    "window sum": (
        "SELECT category, SUM(amount) OVER (PARTITION BY category) FROM transactions",
        "window functions",
    ),
    "row_number": (
        "SELECT ROW_NUMBER() OVER (ORDER BY amount) FROM transactions",
        "window functions",
    ),
    "union of single-row selects": (
        "SELECT COUNT(*) FROM transactions WHERE category = 'grocery' UNION ALL "
        "SELECT COUNT(*) FROM transactions WHERE category = 'travel'",
        "set operations",
    ),
    "intersect": (
        "SELECT category FROM transactions INTERSECT SELECT segment FROM customers",
        "set operations",
    ),
    "union inside a CTE": (
        "WITH u AS (SELECT COUNT(*) AS n FROM transactions UNION SELECT 1) SELECT * FROM u",
        "UNION is not part",
    ),
    "CASE smuggles a row into SUM": (
        "SELECT SUM(CASE WHEN customer_hash = 'c1' THEN amount END) FROM transactions",
        "plain column",
    ),
    "arithmetic smuggles a row into SUM": (
        "SELECT SUM(amount * (category = 'yacht')::INT) FROM transactions",
        "plain column",
    ),
    "an expression inside AVG": ("SELECT AVG(amount + 0) FROM transactions", "plain column"),
    "identity equals a literal": (
        "SELECT COUNT(*) FROM transactions WHERE customer_hash = 'c1'",
        "identity column",
    ),
    "identity in a list": (
        "SELECT COUNT(*) FROM customers WHERE customer_hash IN ('c1', 'c2')",
        "identity column",
    ),
    "identity LIKE": (
        "SELECT COUNT(*) FROM transactions WHERE customer_hash LIKE 'c1%'",
        "identity column",
    ),
    "subquery selecting rows": (
        "SELECT COUNT(*) FROM transactions WHERE customer_hash IN "
        "(SELECT customer_hash FROM customers WHERE segment = 'vip')",
        "subqueries",
    ),
    "scalar subquery": (
        "SELECT category, (SELECT COUNT(*) FROM customers) FROM transactions GROUP BY 1",
        "subqueries",
    ),
    "exists": (
        "SELECT COUNT(*) FROM customers c WHERE EXISTS (SELECT 1 FROM transactions t "
        "WHERE t.customer_hash = c.customer_hash)",
        "subqueries",
    ),
    "CTE that emits rows": (
        "WITH r AS (SELECT * FROM transactions) SELECT COUNT(*) FROM r",
        "emits rows",
    ),
    "derived table that emits rows": (
        "SELECT COUNT(*) FROM (SELECT amount FROM transactions WHERE amount > 100) x",
        "emits rows",
    ),
    "join on undeclared columns": (
        "SELECT COUNT(*) FROM transactions t JOIN customers c ON t.category = c.segment",
        "not a declared join column",
    ),
    "implicit cross join": ("SELECT COUNT(*) FROM transactions, customers", "cross"),
    "explicit cross join": ("SELECT COUNT(*) FROM transactions CROSS JOIN customers", "cross"),
    "non-equality join": (
        "SELECT COUNT(*) FROM transactions t JOIN customers c ON t.customer_hash > c.customer_hash",
        "equalities",
    ),
    "join condition pins a person": (
        f"SELECT COUNT(*) {JOIN} AND c.customer_hash = 'c1'",
        "equalities",
    ),
    "join column output": (
        f"SELECT c.customer_hash, COUNT(*) {JOIN} GROUP BY 1",
        "identity column",
    ),
    "md5 of a dimension": (
        "SELECT md5(category), COUNT(*) FROM transactions GROUP BY 1",
        "function md5",
    ),
    "substring": (
        "SELECT substring(category, 1, 1), COUNT(*) FROM transactions GROUP BY 1",
        "function substring",
    ),
    "to_json": ("SELECT to_json(category), COUNT(*) FROM transactions GROUP BY 1", "function"),
    "hash": ("SELECT hash(category), COUNT(*) FROM transactions GROUP BY 1", "function hash"),
    "cast to bytes": (
        "SELECT CAST(category AS BLOB), COUNT(*) FROM transactions GROUP BY 1",
        "casts to",
    ),
    "read a file": ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "table functions"),
    "unknown table": ("SELECT COUNT(*) FROM secrets", "not an input"),
    "two statements": ("SELECT COUNT(*) FROM transactions; SELECT 1", "exactly one"),
    "DDL": ("CREATE TABLE x AS SELECT COUNT(*) FROM transactions", "exactly one"),
    "not SQL": ("SELEC nothing FROM", "not valid SQL"),
    "select distinct": ("SELECT DISTINCT category FROM transactions", "DISTINCT"),
    "filter on a value": (
        "SELECT COUNT(*) FROM transactions WHERE amount > 100",
        "not a dimension",
    ),
    "group by a value": (
        "SELECT amount, COUNT(*) FROM transactions GROUP BY amount",
        "not a dimension",
    ),
    "order by a value": (
        "SELECT category, COUNT(*) FROM transactions GROUP BY category ORDER BY MAX(amount)",
        "max on",
    ),
    "count distinct of a value": (
        "SELECT COUNT(DISTINCT amount) FROM transactions",
        "count_distinct on transactions.amount",
    ),
    "sum distinct": ("SELECT SUM(DISTINCT amount) FROM transactions", "COUNT only"),
    "sum of age not allowed": ("SELECT SUM(age) FROM customers", "sum on customers.age"),
    "strictest functions: lower() not allowed by the bank": (
        f"SELECT lower(c.segment), SUM(t.amount) {JOIN} GROUP BY 1",
        "function lower",
    ),
    "having on a disallowed aggregate": (
        "SELECT category FROM transactions GROUP BY category HAVING MAX(amount) > 10",
        "max on",
    ),
    "count of the identity (not distinct)": (
        "SELECT COUNT(customer_hash) FROM transactions",
        "count on transactions.customer_hash",
    ),
    "email is not a dimension": (
        "SELECT email, COUNT(*) FROM customers GROUP BY email",
        "not a dimension",
    ),
    "email in a filter": (
        "SELECT COUNT(*) FROM customers WHERE email = 'a@b.c'",
        "not a dimension",
    ),
    "cast reveals a value in a filter": (
        "SELECT COUNT(*) FROM transactions WHERE CAST(amount AS VARCHAR) = '10.00'",
        "not a dimension",
    ),
    "current_date is not in the catalogue": (
        "SELECT current_date, COUNT(*) FROM customers",
        "function",
    ),
    "join USING a column that is not a join column": (
        "SELECT COUNT(*) FROM transactions t JOIN customers c USING (customer_hash, region)",
        "does not resolve",
    ),
    "an aggregate FILTER that pins a person": (
        "SELECT COUNT(*) FILTER (WHERE customer_hash = 'c1') FROM transactions",
        "FILTER",
    ),
    "GROUP BY ALL over a value": (
        "SELECT amount, COUNT(*) FROM transactions GROUP BY ALL",
        "not a dimension",
    ),
    "lateral unnest of a value": (
        "SELECT COUNT(*) FROM transactions, unnest([amount]) u(x)",
        "UNNEST is not part",
    ),
    "two aggregating CTEs joined on a dimension": (
        "WITH a AS (SELECT segment, COUNT(*) AS members FROM customers GROUP BY segment), "
        f"b AS (SELECT c.segment, SUM(t.amount) AS spend {JOIN} GROUP BY c.segment) "
        "SELECT a.segment, a.members, b.spend FROM a JOIN b ON a.segment = b.segment",
        "exactly one SELECT",
    ),
    "an aggregate FILTER (a subset of a group: differenced with the whole)": (
        "SELECT SUM(amount) AS everyone, SUM(amount) FILTER (WHERE category <> 'yacht') AS "
        "others FROM transactions",
        "FILTER",
    ),
    "a sample (each run sees other rows)": (
        "SELECT COUNT(*) AS n FROM transactions USING SAMPLE 1 ROWS",
        "SAMPLE is not part",
    ),
}


def _data() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for setting in ENGINE_SETTINGS:  # as the enclave runs checked SQL
        con.execute(setting)
    segments = ["a"] * 12 + ["b"] * 12 + ["c"] * 5 + ["vip"]
    con.execute(
        "CREATE TABLE customers AS SELECT 'c' || i AS customer_hash, "
        "$segments[i + 1] AS segment, CASE WHEN i % 2 = 0 THEN 'north' ELSE 'south' END "
        "AS region, 20 + i AS age, i % 3 <> 0 AS opted_in, 'c' || i || '@mail' AS email "
        "FROM range(30) r(i)",
        {"segments": segments},
    )
    con.execute(
        "CREATE TABLE transactions AS SELECT row_number() OVER () AS txn_id, "
        "'c' || (i // 6) AS customer_hash, (10 + i)::DECIMAL(12,2) AS amount, "
        "CASE WHEN i % 2 = 0 THEN 'grocery' ELSE 'travel' END AS category, "
        "TIMESTAMP '2026-03-01' + INTERVAL (i) HOUR AS ts FROM range(180) r(i) "
        "UNION ALL SELECT 1000, 'c7', 99999, 'yacht', TIMESTAMP '2026-03-02'"
    )
    return con


@pytest.fixture(scope="module")
def data() -> duckdb.DuckDBPyConnection:
    return _data()


def test_the_table_is_large_enough() -> None:
    assert len(ALLOWED) + len(REFUSED) >= 80


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_allowed_queries_run_with_thresholds(data: duckdb.DuckDBPyConnection, case: str) -> None:
    sql, columns, rows = ALLOWED[case]
    checked = check_query(sql, SOURCES)
    assert checked.mode == "aggregation"
    result = data.execute(checked.sql).fetchall()
    names = [d[0] for d in data.description]
    assert names == columns
    assert len(result) == rows, (checked.sql, result)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_queries_name_the_rule_they_break(case: str) -> None:
    sql, reason = REFUSED[case]
    with pytest.raises(PolicyError, match=None) as caught:
        check_query(sql, SOURCES)
    assert reason
    assert reason.lower() in str(caught.value).lower(), str(caught.value)


def test_without_thresholds_the_same_query_would_reveal_the_tiny_group(
    data: duckdb.DuckDBPyConnection,
) -> None:
    sql = "SELECT category, COUNT(*) AS n FROM transactions GROUP BY category"
    assert len(data.execute(sql).fetchall()) == 3  # yacht: one customer
    assert "HAVING" in check_query(sql, SOURCES).sql


def test_thresholds_take_the_strictest_rule_and_column_overrides() -> None:
    assert check_query(f"SELECT COUNT(*) {JOIN}", SOURCES).threshold == 3  # the bank's, higher
    assert (
        check_query("SELECT year(ts), COUNT(*) FROM transactions GROUP BY 1", SOURCES).threshold
        == 4
    )
    only_merchant = {"customers": SOURCES["customers"]}
    assert check_query("SELECT COUNT(*) FROM customers", only_merchant).threshold == 2


LIST_CUSTOMERS = ListRule.model_validate(
    {"type": "list", "list_columns": ["segment", "region"], "join_columns": ["customer_hash"]}
)
LIST_TRANSACTIONS = ListRule.model_validate(
    {"type": "list", "list_columns": ["category"], "join_columns": ["customer_hash"]}
)
LISTS = {
    "transactions": Source("transactions", TRANSACTIONS, LIST_TRANSACTIONS),
    "customers": Source("customers", CUSTOMERS, LIST_CUSTOMERS),
}


def test_list_rules_output_overlap_rows_of_list_columns_only(
    data: duckdb.DuckDBPyConnection,
) -> None:
    checked = check_query(f"SELECT DISTINCT c.segment, t.category {JOIN}", LISTS)
    assert checked.mode == "list"
    assert len(data.execute(checked.sql).fetchall()) == 9
    for sql, reason in (
        (f"SELECT c.customer_hash {JOIN}", "not a list column"),
        (f"SELECT c.email {JOIN}", "not a list column"),
        (f"SELECT c.segment, COUNT(*) {JOIN} GROUP BY 1", "not aggregates"),
        (
            "SELECT c.segment FROM transactions t JOIN customers c ON t.category = c.segment",
            "not a declared join column",
        ),
        (f"SELECT md5(c.segment) {JOIN}", "function md5"),
    ):
        with pytest.raises(PolicyError, match=reason):
            check_query(sql, LISTS)
    mixed = {"transactions": SOURCES["transactions"], "customers": LISTS["customers"]}
    with pytest.raises(PolicyError, match="cannot meet"):
        check_query(f"SELECT COUNT(*) {JOIN}", mixed)


def test_custom_rules_need_approval_thresholds_and_hide_columns(
    data: duckdb.DuckDBPyConnection,
) -> None:
    custom = CustomRule.model_validate(
        {"type": "custom", "min_distinct": 5, "disallowed_columns": ["email"]}
    )
    unapproved = {"customers": Source("customers", CUSTOMERS, custom)}
    with pytest.raises(PolicyError, match="owner must approve"):
        check_query("SELECT region, COUNT(*) FROM customers GROUP BY 1", unapproved)
    approved = {"customers": Source("customers", CUSTOMERS, custom, owner_approved=True)}
    checked = check_query("SELECT segment, COUNT(*) AS n FROM customers GROUP BY 1", approved)
    assert checked.threshold == 5
    assert len(data.execute(checked.sql).fetchall()) == 3  # c (5) kept, vip (1) suppressed
    with pytest.raises(PolicyError, match="must aggregate"):
        check_query("SELECT segment FROM customers", approved)
    with pytest.raises(PolicyError, match="may never be output"):
        check_query(
            "WITH x AS (SELECT email AS contact, COUNT(*) AS n FROM customers GROUP BY 1) "
            "SELECT contact FROM x",
            approved,
        )
    no_rule = {"customers": Source("customers", CUSTOMERS, None, owner_approved=True)}
    free = check_query("SELECT email FROM customers", no_rule)
    assert free.sql == "SELECT email FROM customers"  # exactly what the owner approved


def test_rules_are_checked_against_the_schema() -> None:
    check_rule(BANK_RULE, TRANSACTIONS)
    for rule, reason in (
        ({**BANK_RULE.model_dump(), "dimensions": ["nope"]}, "not in the schema"),
        ({**BANK_RULE.model_dump(), "dimensions": ["customer_hash"]}, "cannot be a dimension"),
        (
            {
                **BANK_RULE.model_dump(),
                "aggregates": [{"function": "max", "columns": ["customer_hash"]}],
            },
            "would reveal identities",
        ),
        (
            {
                **BANK_RULE.model_dump(),
                "dimensions": ["category"],
                "join_columns": ["category"],
            },
            "never output",
        ),
        ({**LIST_TRANSACTIONS.model_dump(), "list_columns": ["customer_hash"]}, "never output"),
        ({**BANK_RULE.model_dump(), "scalar_functions": ["sha256"]}, "cannot be allowed"),
    ):
        model = ListRule if rule["type"] == "list" else AggregationRule
        with pytest.raises(GovernanceError, match=reason):
            check_rule(model.model_validate(rule), TRANSACTIONS)


def test_identities_equated_by_an_inner_join_are_counted_once() -> None:
    inner = check_query(f"SELECT c.segment, SUM(t.amount) {JOIN} GROUP BY 1", SOURCES).sql
    assert inner.count("COUNT(DISTINCT") == 1
    left = check_query(
        "SELECT c.region, COUNT(t.txn_id) FROM customers c LEFT JOIN transactions t "
        "ON c.customer_hash = t.customer_hash GROUP BY 1",
        SOURCES,
    ).sql
    assert left.count("COUNT(DISTINCT") == 2  # outer joins keep both: their counts differ
