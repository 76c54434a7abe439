"""``threshold.enforce`` called directly, as the mutants in tests/mutation asked:
the bounded rewrite is used exactly where it is exact (every other shape gets
the plain HAVING), and where it is used it returns what the plain HAVING
returns, row for row and in order, including the ORDER BY, LIMIT and WHERE
that the policy check's own queries never hand it."""

from __future__ import annotations

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from cleanroom.policy.threshold import DIALECT, Identity, enforce

K = 5
BOUNDED = "__cleanroom_t0_q"
INPUTS = {"people", "other"}
PID = Identity(exp.column("pid", "people"), integer=True)

# groups made to take every path: proven by the bucket bound (many), counted exactly and
# kept (bucket: five people in one bucket), counted exactly and suppressed (few: two people,
# many rows), impossible (one), and one whose fifth person only passes without the WHERE
ROWS = (
    [(pid, "many", 1) for pid in range(10)]
    + [(pid, "bucket", 1) for pid in (0, 64, 128, 192, 256)]
    + [(pid, "few", 1) for pid in (1, 2) for _ in range(4)]
    + [(3, "one", 1)]
    + [(pid, "where", 1) for pid in (65, 129, 193, 257) for _ in range(2)]
    + [(321, "where", 0)]
)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    values = ", ".join(f"({pid}, '{grp}', {val})" for pid, grp, val in ROWS)
    con.execute(f"CREATE TABLE people AS SELECT * FROM (VALUES {values}) t(pid, grp, val)")
    con.execute("CREATE TABLE other AS SELECT pid, grp, val * 2 AS val FROM people")
    return con


def rewrite(sql: str, *, k: int = K, bounded: bool = True, counted: bool = False) -> str:
    select = sqlglot.parse_one(sql, dialect=DIALECT)
    assert isinstance(select, exp.Select)
    identity = Identity(PID.column, integer=True, counted=counted)
    out = enforce(select, [identity], k, tag="t0", inputs=INPUTS, bounded=bounded)
    return out.sql(dialect=DIALECT)


AGREE = {
    "by group": "SELECT grp, COUNT(*) AS n, SUM(val) AS total FROM people GROUP BY grp",
    "where": "SELECT grp, COUNT(*) AS n FROM people WHERE val = 1 GROUP BY grp",
    "order by ordinal": "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY 2 DESC, 1",
    "order by alias": "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY n DESC, grp",
    "alias named as a column": (
        "SELECT grp, SUM(val) AS val FROM people GROUP BY grp ORDER BY val DESC, grp"
    ),
    "order by an expression": (
        "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY SUM(val) DESC, grp"
    ),
    "limit and offset": (
        "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY n DESC LIMIT 2 OFFSET 1"
    ),
    "global": "SELECT COUNT(*) AS n FROM people WHERE grp = 'bucket'",
    "join": (
        "SELECT people.grp, SUM(other.val) AS total FROM people "
        "JOIN other ON people.pid = other.pid AND people.grp = other.grp GROUP BY people.grp"
    ),
    "own cte": ("WITH c AS (SELECT 1 AS one) SELECT grp, COUNT(*) AS n FROM people GROUP BY grp"),
}


@pytest.mark.parametrize("case", AGREE)
def test_the_bounded_rewrite_returns_what_the_plain_having_returns(
    con: duckdb.DuckDBPyConnection, case: str
) -> None:
    sql = AGREE[case]
    bounded = rewrite(sql)
    assert BOUNDED in bounded  # the comparison below is between two different plans
    plain = rewrite(sql, bounded=False)
    assert BOUNDED not in plain
    ordered = "ORDER BY" in sql
    got, want = con.execute(bounded).fetchall(), con.execute(plain).fetchall()
    assert (got if ordered else sorted(got, key=repr)) == (
        want if ordered else sorted(want, key=repr)
    )
    assert got  # some group passes: the data exercise the kept path too


def test_where_applies_to_the_exact_count(con: duckdb.DuckDBPyConnection) -> None:
    sql = "SELECT grp, COUNT(*) AS n FROM people WHERE val = 1 GROUP BY grp ORDER BY grp"
    assert con.execute(rewrite(sql)).fetchall() == [("bucket", 5), ("many", 10)]
    sql = "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY grp"
    assert con.execute(rewrite(sql)).fetchall() == [("bucket", 5), ("many", 10), ("where", 9)]


PLAIN = {
    "distinct": "SELECT DISTINCT grp, COUNT(*) AS n FROM people GROUP BY grp",
    "qualify": "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp QUALIFY n > 1",
    "join using": "SELECT grp, COUNT(*) AS n FROM people JOIN other USING (pid) GROUP BY grp",
    "natural join": "SELECT people.grp, COUNT(*) AS n FROM people NATURAL JOIN other GROUP BY 1",
    "derived table": "SELECT grp, COUNT(*) AS n FROM (SELECT * FROM people) AS people GROUP BY grp",
    "a cte as input": (
        "WITH c AS (SELECT * FROM people) SELECT grp, COUNT(*) AS n FROM c AS people GROUP BY grp"
    ),
    "joined cte": (
        "WITH c AS (SELECT * FROM other) SELECT people.grp, COUNT(*) AS n FROM people "
        "JOIN c ON people.pid = c.pid GROUP BY people.grp"
    ),
    "sample": "SELECT grp, COUNT(*) AS n FROM people TABLESAMPLE 50% GROUP BY grp",
    "rollup": "SELECT grp, COUNT(*) AS n FROM people GROUP BY ROLLUP (grp)",
    "cube": "SELECT grp, COUNT(*) AS n FROM people GROUP BY CUBE (grp)",
    "grouping sets": "SELECT grp, COUNT(*) AS n FROM people GROUP BY GROUPING SETS ((grp), ())",
    "group by all": "SELECT grp, COUNT(*) AS n FROM people GROUP BY ALL",
    "window": "SELECT grp, SUM(COUNT(*)) OVER () AS n FROM people GROUP BY grp",
    "scalar subquery": (
        "SELECT grp, COUNT(*) AS n FROM people WHERE val < (SELECT MAX(val) FROM other) "
        "GROUP BY grp"
    ),
    "in subquery": (
        "SELECT grp, COUNT(*) AS n FROM people WHERE pid IN (SELECT pid FROM other) GROUP BY grp"
    ),
    "exists": (
        "SELECT grp, COUNT(*) AS n FROM people "
        "WHERE EXISTS (SELECT 1 FROM other WHERE other.pid = people.pid) GROUP BY grp"
    ),
    "subquery in having": (
        "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp "
        "HAVING COUNT(*) > (SELECT COUNT(*) FROM other WHERE val > 100)"
    ),
    "subquery in order by": (
        "SELECT grp, COUNT(*) AS n FROM people GROUP BY grp ORDER BY (SELECT 1), grp"
    ),
    "no from": "SELECT COUNT(*) AS n",
}


@pytest.mark.parametrize("case", PLAIN)
def test_shapes_the_bounds_cannot_prove_get_the_plain_having(case: str) -> None:
    sql = rewrite(PLAIN[case])
    assert BOUNDED not in sql
    assert "COUNT(DISTINCT people.pid) >= 5" in sql.partition("HAVING")[2]


def test_a_threshold_above_the_bitmap_or_an_exact_request_gets_the_plain_having() -> None:
    sql = AGREE["by group"]
    assert BOUNDED in rewrite(sql, k=64)
    assert BOUNDED not in rewrite(sql, k=65)
    assert BOUNDED not in rewrite(sql, bounded=False)
    assert BOUNDED not in rewrite(sql, counted=True)
