"""Thresholds enforced with bounds must give exactly what exact distinct
counts give: on the policy table, on random data, and on data built to fool
the bounds (many rows from few people, identities in one bucket, a NULL whose
hash sets a bit, NULL group keys, LIMIT after suppression).

Identity columns are declared NOT NULL, but NULL identities still reach an
aggregate through outer joins; the tables here hold them directly so every
query shape meets them."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

from cleanroom.datasets.schema import Schema
from cleanroom.errors import PolicyError
from cleanroom.policy.check import Source, check_query
from cleanroom.policy.rules import AggregationRule
from tests.test_policy import ALLOWED, SOURCES, _data

K = 5
BOUNDED = "__cleanroom_t0_q"  # the bounded rewrite's first helper CTE


def _source(name: str, identity_type: str) -> Source:
    schema = Schema.from_json(
        {
            "identity_column": "pid",
            "columns": [
                {"name": "pid", "type": identity_type, "nullable": False},
                {"name": "grp", "type": "string"},
                {"name": "val", "type": "int64"},
            ],
        }
    )
    rule = AggregationRule.model_validate(
        {
            "type": "aggregation",
            "aggregates": [
                {"function": "count", "columns": ["val"]},
                {"function": "sum", "columns": ["val"]},
                {"function": "count_distinct", "columns": ["pid"]},
            ],
            "dimensions": ["grp"],
            "join_columns": ["pid"],
            "min_distinct": K,
        }
    )
    return Source(name, schema, rule)


SOURCES_T = {"people": _source("people", "int64"), "other": _source("other", "int64")}
SOURCES_S = {"people": _source("people", "string"), "other": _source("other", "string")}
BY_GROUP = "SELECT grp, COUNT(*) AS n, SUM(val) AS total FROM people GROUP BY grp"
GLOBAL = "SELECT COUNT(*) AS n FROM people"
TOP_TWO = "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY n DESC, grp LIMIT 2"
OUTER = (
    "SELECT p.grp, COUNT(o.val) AS n FROM people p LEFT JOIN other o ON p.pid = o.pid "
    "GROUP BY p.grp"
)
QUERIES = [
    BY_GROUP,
    GLOBAL,
    TOP_TWO,
    OUTER,
    "SELECT grp, SUM(val) AS total FROM people WHERE grp <> 'g1' GROUP BY grp",
    "SELECT grp, SUM(val) AS total FROM people WHERE grp = 'g1' OR grp IS NULL GROUP BY grp",
]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, ordered: bool) -> list[tuple[object, ...]]:
    rows = con.execute(sql).fetchall()
    return rows if ordered else sorted(rows, key=repr)


def _both(con: duckdb.DuckDBPyConnection, sql: str, sources: dict[str, Source]) -> list[object]:
    bounded = check_query(sql, sources).sql
    exact = check_query(sql, sources, bounded=False).sql
    assert BOUNDED in bounded, bounded  # the bounded rewrite is what runs
    assert BOUNDED not in exact
    ordered = "ORDER BY" in sql
    got = _rows(con, bounded, ordered)
    assert got == _rows(con, exact, ordered), sql
    return list(got)


def _table(con: duckdb.DuckDBPyConnection, name: str, rows: list[tuple[object, ...]]) -> None:
    strings = any(isinstance(r[0], str) for r in rows)
    columns = list(zip(*rows, strict=True)) if rows else [(), (), ()]
    data = pa.table(
        {
            "pid": pa.array(columns[0], pa.string() if strings else pa.int64()),
            "grp": pa.array(columns[1], pa.string()),
            "val": pa.array(columns[2], pa.int64()),
        }
    )
    con.register("incoming", data)
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
    con.unregister("incoming")


def test_bounded_and_exact_agree_on_every_allowed_query_of_the_policy_table() -> None:
    con = _data()
    rewritten = 0
    for sql, _, _ in ALLOWED.values():
        bounded = check_query(sql, SOURCES).sql
        exact = check_query(sql, SOURCES, bounded=False).sql
        rewritten += BOUNDED in bounded
        ordered = "ORDER BY" in sql.upper()
        assert _rows(con, bounded, ordered) == _rows(con, exact, ordered), sql
    assert rewritten >= 25  # most of the table takes the bounded path


@pytest.mark.parametrize("identity", ["int", "string"])
def test_bounded_and_exact_agree_on_random_data(identity: str) -> None:
    """People in few buckets, groups near the threshold, NULL people and
    NULL groups, repeated rows: 60 random rooms, every query."""
    rng = random.Random(20261122)
    sources = SOURCES_T if identity == "int" else SOURCES_S
    con = duckdb.connect()
    for _ in range(60):
        tables: dict[str, list[tuple[object, ...]]] = {"people": [], "other": []}
        for g in range(rng.randint(1, 6)):
            grp = None if g == 0 and rng.random() < 0.3 else f"g{g}"
            spread = rng.choice([1, 64, 1000])  # 64: every person in the same bucket
            people = rng.choice([1, K - 1, K, K + 1, 3 * K, 80])
            for person in range(people):
                number = (g * 100 + person) * spread
                pid: object = number if identity == "int" else f"p{number}"
                for _ in range(rng.choice([1, 1, 3, 40])):
                    tables["people"].append((pid, grp, rng.randint(0, 9)))
                if rng.random() < 0.5:
                    tables["other"].append((pid, grp, 1))
            for _ in range(rng.choice([0, 0, 5])):
                tables["people"].append((None, grp, 1))
        for name, raw in tables.items():
            rows = [(None if r[0] is None else str(r[0]), *r[1:]) for r in raw]
            _table(con, name, rows if identity == "string" else raw)
        for sql in QUERIES:
            _both(con, sql, sources)


def test_many_rows_from_too_few_people_are_suppressed() -> None:
    con = duckdb.connect()
    rows = [(p, "few", 1) for p in range(K - 1) for _ in range(5000)]
    rows += [(100 + p, "enough", 1) for p in range(K)]
    _table(con, "people", rows)
    _table(con, "other", [])
    got = _both(con, BY_GROUP, SOURCES_T)
    assert [r[0] for r in got] == ["enough"]


def test_people_in_one_bucket_are_counted_exactly() -> None:
    """Identities that all share their low six bits prove nothing by bounds:
    the exact count decides, both ways."""
    con = duckdb.connect()
    rows = [(64 * p, "exactly k", 1) for p in range(K)]
    rows += [(64 * (100 + p), "one short", 1) for p in range(K - 1) for _ in range(3)]
    _table(con, "people", rows)
    _table(con, "other", [])
    bound = con.execute(
        "SELECT grp, BIT_COUNT(BIT_OR(CAST(1 AS UBIGINT) << CAST(pid & 63 AS UTINYINT))) "
        "FROM people GROUP BY grp"
    ).fetchall()
    assert {b for _, b in bound} == {1}  # the bound alone proves one person per group
    assert [r[0] for r in _both(con, BY_GROUP, SOURCES_T)] == ["exactly k"]


def test_a_null_identity_does_not_count_as_a_person() -> None:
    """HASH(NULL) is a value: K - 1 people in distinct buckets plus NULL rows
    set K bits. The group must still be suppressed."""
    con = duckdb.connect()
    null_bucket = con.execute("SELECT HASH(NULL::VARCHAR) & 63").fetchone()
    assert null_bucket is not None
    people: list[str] = []
    taken = {null_bucket[0]}
    for i in range(10_000):
        pid = f"p{i}"
        bucket = con.execute("SELECT HASH(?::VARCHAR) & 63", [pid]).fetchone()
        assert bucket is not None
        if bucket[0] not in taken:
            taken.add(bucket[0])
            people.append(pid)
        if len(people) == K - 1:
            break
    rows: list[tuple[object, ...]] = [(p, "short", 1) for p in people] + [(None, "short", 1)] * 3
    rows += [(f"q{p}", "enough", 1) for p in range(K)]
    _table(con, "people", rows)
    _table(con, "other", [("x", "x", 1)])
    bits = con.execute(
        "SELECT BIT_COUNT(BIT_OR(CAST(1 AS UBIGINT) << CAST(HASH(pid) & 63 AS UTINYINT))) "
        "FROM people WHERE grp = 'short'"
    ).fetchone()
    assert bits == (K,)  # without taking the NULL's bit off, the bound would pass it
    assert [r[0] for r in _both(con, BY_GROUP, SOURCES_S)] == ["enough"]


def test_limit_applies_after_suppression() -> None:
    """ORDER BY n DESC LIMIT 1 must return the largest group that passes,
    not an empty result because the largest group was one person."""
    con = duckdb.connect()
    rows = [(1, "whale", 1)] * 500 + [(10 + p, "crowd", 1) for p in range(K * 3)]
    rows += [(64 * (50 + p), "bucketed", 1) for p in range(K)] * 2
    _table(con, "people", rows)
    _table(con, "other", [])
    got = _both(con, TOP_TWO, SOURCES_T)
    assert [r[0] for r in got] == ["crowd", "bucketed"]


def test_null_group_keys_are_matched_when_counted_exactly() -> None:
    con = duckdb.connect()
    rows = [(64 * p, None, 1) for p in range(K)]  # undecided by the bound, passes exactly
    rows += [(64 * (10 + p), "short", 1) for p in range(K - 1)] * 2
    _table(con, "people", rows)
    _table(con, "other", [])
    assert [r[0] for r in _both(con, BY_GROUP, SOURCES_T)] == [None]


def test_global_aggregates_below_and_above_the_threshold() -> None:
    con = duckdb.connect()
    _table(con, "other", [])
    _table(con, "people", [(64 * p, "g", 1) for p in range(K - 1)] * 3)
    assert _both(con, GLOBAL, SOURCES_T) == []
    _table(con, "people", [(64 * p, "g", 1) for p in range(K)])
    assert _both(con, GLOBAL, SOURCES_T) == [(K,)]


def test_an_outer_join_needs_both_identities_to_pass() -> None:
    con = duckdb.connect()
    _table(con, "people", [(p, "g", 1) for p in range(3 * K)])
    _table(con, "other", [(p, "g", 1) for p in range(K - 1)])  # too few on the joined side
    assert _both(con, OUTER, SOURCES_T) == []
    _table(con, "other", [(p, "g", 1) for p in range(K)])
    assert _both(con, OUTER, SOURCES_T) == [("g", K)]


def test_thresholds_inside_ctes_and_derived_tables() -> None:
    con = duckdb.connect()
    rows = [(p, f"g{p % 3}", p) for p in range(40)] + [(999, "solo", 1)] * 50
    _table(con, "people", rows)
    _table(con, "other", [(p, f"g{p % 3}", 1) for p in range(40)])
    sql = (
        "WITH a AS (SELECT grp, SUM(val) AS total FROM people GROUP BY grp), "
        "b AS (SELECT grp, total * 2 AS twice FROM a WHERE total > 0) "
        "SELECT grp, twice FROM b ORDER BY grp"
    )
    assert [r[0] for r in _both(con, sql, SOURCES_T)] == ["g0", "g1", "g2"]
    derived = (
        "SELECT d.grp, d.n FROM (SELECT grp, COUNT(*) AS n FROM people GROUP BY grp) d "
        "ORDER BY d.n DESC LIMIT 1"
    )
    assert [r[0] for r in _both(con, derived, SOURCES_T)] == ["g0"]


def test_a_cte_cannot_take_an_inputs_name() -> None:
    """A CTE named like an input would hide it (and could give other rows when
    the exact pass reads the input again): refused, whatever its case."""
    for name in ("other", "OTHER", '"Other"'):
        sql = (
            f"WITH {name} AS (SELECT 1 AS pid) "
            "SELECT p.grp, COUNT(*) AS n FROM people p JOIN other o ON p.pid = o.pid GROUP BY p.grp"
        )
        with pytest.raises(PolicyError, match="name of an input"):
            check_query(sql, SOURCES_T)


def test_the_exact_having_is_free_when_the_query_counts_the_identity() -> None:
    sql = "SELECT grp, COUNT(DISTINCT pid) AS people FROM people GROUP BY grp"
    checked = check_query(sql, SOURCES_T).sql
    assert BOUNDED not in checked
    assert 'HAVING COUNT(DISTINCT "people"."pid") >= 5' in checked


def test_thresholds_above_what_a_bitmap_proves_are_counted_exactly() -> None:
    strict = _source("people", "int64")
    rule = strict.rule
    assert isinstance(rule, AggregationRule)
    sources = {
        "people": Source("people", strict.schema, rule.model_copy(update={"min_distinct": 65}))
    }
    checked = check_query(BY_GROUP, sources).sql
    assert BOUNDED not in checked
    assert ">= 65" in checked
