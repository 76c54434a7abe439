"""Privacy controls: the cost of the static check, of thresholds and of DP release.

Targets: the policy check (parse, qualify, check every rule, rewrite for
thresholds) takes < 20 ms per query; threshold enforcement and DP release cost
<= 1.3x the same TPC-H-style aggregate without controls. Every side runs in the
same process over the same TPC-H SF1 tables (from the tpch extension package),
alternating, 5 runs each; medians. Thresholds are timed twice: as enforced (a
bounded count that proves most groups, exact counts for the rest) and as plain
exact counts (``HAVING COUNT(DISTINCT ...)``), for comparison. Encryption is
left out on purpose (its cost is measured by benchmarks/tpch_jobs.py): this
isolates what the controls add.

    .venv/bin/python benchmarks/privacy.py [--sf 1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import duckdb_extension_tpch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median
from cleanroom.datasets.schema import Schema
from cleanroom.errors import PolicyError
from cleanroom.policy import dp
from cleanroom.policy.check import ENGINE_SETTINGS, Source, check_dp, check_query
from cleanroom.policy.rules import AggregationRule, DpSpec

# Each table carries the customer it is about, as a clean room dataset would:
# line items get their order's customer (l_custkey), the identity of every table.
LINEITEM = Schema.from_json(
    {
        "identity_column": "l_custkey",
        "columns": [
            {"name": n, "type": t, "nullable": False}
            for n, t in (
                ("l_orderkey", "int64"),
                ("l_custkey", "int64"),
                ("l_quantity", "decimal(15,2)"),
                ("l_extendedprice", "decimal(15,2)"),
                ("l_discount", "decimal(15,2)"),
                ("l_returnflag", "string"),
                ("l_linestatus", "string"),
                ("l_shipmode", "string"),
                ("l_shipdate", "date"),
            )
        ],
    }
)
ORDERS = Schema.from_json(
    {
        "identity_column": "o_custkey",
        "columns": [
            {"name": n, "type": t, "nullable": False}
            for n, t in (
                ("o_orderkey", "int64"),
                ("o_custkey", "int64"),
                ("o_orderpriority", "string"),
                ("o_orderstatus", "string"),
                ("o_orderdate", "date"),
                ("o_totalprice", "decimal(15,2)"),
            )
        ],
    }
)
CUSTOMER = Schema.from_json(
    {
        "identity_column": "c_custkey",
        "columns": [
            {"name": n, "type": t, "nullable": False}
            for n, t in (("c_custkey", "int64"), ("c_mktsegment", "string"))
        ],
    }
)
RULES = {
    "lineitem": AggregationRule.model_validate(
        {
            "type": "aggregation",
            "aggregates": [
                {"function": f, "columns": ["l_quantity", "l_extendedprice", "l_discount"]}
                for f in ("sum", "avg", "count")
            ],
            "dimensions": ["l_returnflag", "l_linestatus", "l_shipmode", "l_shipdate"],
            "join_columns": ["l_orderkey", "l_custkey"],
            "scalar_functions": ["year", "date_trunc", "round"],
            "min_distinct": 10,
        }
    ),
    "orders": AggregationRule.model_validate(
        {
            "type": "aggregation",
            "aggregates": [
                {"function": "sum", "columns": ["o_totalprice"]},
                {"function": "count_distinct", "columns": ["o_custkey"]},
            ],
            "dimensions": ["o_orderpriority", "o_orderstatus", "o_orderdate"],
            "join_columns": ["o_orderkey", "o_custkey"],
            "scalar_functions": ["year", "date_trunc", "round"],
            "min_distinct": 10,
        }
    ),
    "customer": AggregationRule.model_validate(
        {
            "type": "aggregation",
            "dimensions": ["c_mktsegment"],
            "join_columns": ["c_custkey"],
            "scalar_functions": ["year", "date_trunc", "round"],
            "min_distinct": 10,
        }
    ),
}
SOURCES = {
    "lineitem": Source("lineitem", LINEITEM, RULES["lineitem"]),
    "orders": Source("orders", ORDERS, RULES["orders"]),
    "customer": Source("customer", CUSTOMER, RULES["customer"]),
}
QUERIES = {
    "q1 pricing summary": (
        "SELECT l_returnflag, l_linestatus, SUM(l_quantity) AS sum_qty, "
        "SUM(l_extendedprice) AS sum_price, AVG(l_quantity) AS avg_qty, "
        "AVG(l_discount) AS avg_disc, COUNT(*) AS count_order FROM lineitem "
        "WHERE l_shipdate <= DATE '1998-09-02' GROUP BY l_returnflag, l_linestatus "
        "ORDER BY l_returnflag, l_linestatus"
    ),
    "q4-like priority count": (
        "SELECT o_orderpriority, COUNT(DISTINCT o_custkey) AS customers, SUM(o_totalprice) AS "
        "total FROM orders WHERE o_orderdate >= DATE '1993-07-01' GROUP BY o_orderpriority "
        "ORDER BY o_orderpriority"
    ),
    "q12-like shipmode by priority": (
        "SELECT l.l_shipmode, o.o_orderpriority, COUNT(*) AS n, SUM(l.l_extendedprice) AS revenue "
        "FROM lineitem l JOIN orders o ON l.l_orderkey = o.o_orderkey "
        "GROUP BY l.l_shipmode, o.o_orderpriority ORDER BY 1, 2"
    ),
    "q3-like revenue by market segment": (
        "SELECT c.c_mktsegment, SUM(o.o_totalprice) AS revenue FROM customer c "
        "JOIN orders o ON c.c_custkey = o.o_custkey GROUP BY 1 ORDER BY 1"
    ),
    "yearly revenue": (
        "SELECT year(o_orderdate) AS y, SUM(o_totalprice) AS revenue FROM orders "
        "GROUP BY year(o_orderdate) ORDER BY 1"
    ),
}


def _dp(unit: str, bound: int, groups: dict[str, list[str]], column: str, upper: int) -> DpSpec:
    return DpSpec.model_validate(
        {
            "epsilon": 1.0,
            "unit": unit,
            "max_contributions": bound,
            "group_by": groups,
            "aggregates": [
                {"name": "n", "function": "count"},
                {"name": "value", "function": "sum", "column": column, "lower": 0, "upper": upper},
            ],
        }
    )


MODES = ["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"]
PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
# name: (DP row query, its specification, the same aggregate without controls)
DP_QUERIES = {
    "revenue by return flag": (
        (
            "SELECT l_custkey AS customer, l_returnflag AS flag, l_extendedprice AS price "
            "FROM lineitem"
        ),
        _dp("customer", 100, {"flag": ["A", "N", "R"]}, "price", 100_000),
        (
            "SELECT l_returnflag AS flag, COUNT(*) AS n, SUM(l_extendedprice) AS value "
            "FROM lineitem GROUP BY 1"
        ),
    ),
    "revenue by ship mode and priority": (
        (
            "SELECT l.l_custkey AS customer, l.l_shipmode AS mode, o.o_orderpriority AS priority, "
            "l.l_extendedprice AS price FROM lineitem l JOIN orders o "
            "ON l.l_orderkey = o.o_orderkey AND l.l_custkey = o.o_custkey"
        ),
        _dp("customer", 100, {"mode": MODES, "priority": PRIORITIES}, "price", 100_000),
        (
            "SELECT l.l_shipmode AS mode, o.o_orderpriority AS priority, COUNT(*) AS n, "
            "SUM(l.l_extendedprice) AS value FROM lineitem l JOIN orders o "
            "ON l.l_orderkey = o.o_orderkey AND l.l_custkey = o.o_custkey GROUP BY 1, 2"
        ),
    ),
    "order value by priority": (
        (
            "SELECT o_custkey AS customer, o_orderpriority AS priority, o_totalprice AS total "
            "FROM orders"
        ),
        _dp("customer", 20, {"priority": PRIORITIES}, "total", 500_000),
        (
            "SELECT o_orderpriority AS priority, COUNT(*) AS n, SUM(o_totalprice) AS value "
            "FROM orders GROUP BY 1"
        ),
    ),
}


def attack_corpus() -> None:
    """The check's time over every query the tests throw at it (allowed, refused,
    attacks, the fuzzer's regression cases) and the largest it accepts to parse:
    the median, the 99th percentile and the worst case."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests import test_output_privacy as attacks  # noqa: PLC0415 - test tables as data
    from tests import test_policy as table  # noqa: PLC0415

    corpus = [sql for sql, _, _ in table.ALLOWED.values()]
    corpus += [sql for sql, _ in table.REFUSED.values()]
    corpus += attacks.NOT_IN_THE_GRAMMAR + attacks.DIFFERENCING
    vectors = Path(__file__).parent.parent / "tests" / "vectors" / "policy_fuzz"
    corpus += [json.loads(f.read_text())["sql"] for f in sorted(vectors.glob("*.json"))]
    # the largest shapes the bounds admit: a 600-branch CASE, a 3,000-value IN list
    cases = " ".join(f"WHEN category = 'c{i}' THEN 'v{i}'" for i in range(600))
    corpus.append(f"SELECT CASE {cases} END AS k, COUNT(*) FROM transactions GROUP BY 1")
    values = ", ".join(f"'v{i}'" for i in range(3000))
    corpus.append(f"SELECT COUNT(*) FROM transactions WHERE category IN ({values})")
    timings = []
    for sql in corpus:
        start = time.perf_counter()
        with contextlib.suppress(PolicyError):
            check_query(sql, table.SOURCES)
        timings.append((time.perf_counter() - start) * 1000)
    ordered = sorted(timings)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    print(
        f"policy check over the attack corpus ({len(corpus)} queries, refusals included): "
        f"median {median(timings):.1f} ms, 99th percentile {p99:.1f} ms, worst {ordered[-1]:.0f} ms"
    )


def timed_ms(con: duckdb.DuckDBPyConnection, sql: str, *, checked: bool = False) -> float:
    """One run; checked SQL runs with the engine settings the enclave applies
    (ENGINE_SETTINGS), plain SQL with DuckDB's defaults."""
    for setting in ENGINE_SETTINGS if checked else ("RESET disabled_optimizers",):
        con.execute(setting)
    start = time.perf_counter()
    con.execute(sql).to_arrow_table()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d} {machine()}; duckdb {duckdb.__version__}")

    # 1. the static check
    every = list(QUERIES.values())
    check_query(every[0], SOURCES)  # warm-up: sqlglot's first parse builds its tables
    check_ms = []
    for _ in range(args.repeat):
        for sql in every:
            start = time.perf_counter()
            check_query(sql, SOURCES)
            check_ms.append((time.perf_counter() - start) * 1000)
        for rows, spec, _ in DP_QUERIES.values():
            start = time.perf_counter()
            check_dp(rows, SOURCES, spec)
            check_ms.append((time.perf_counter() - start) * 1000)
    p95 = sorted(check_ms)[int(0.95 * (len(check_ms) - 1))]
    print(
        f"policy check: median {median(check_ms):.1f} ms, 95th percentile {p95:.1f} ms, "
        f"max {max(check_ms):.1f} ms per query over {len(check_ms)} checks (target < 20 ms)"
    )

    attack_corpus()

    # 2. thresholds and DP vs no controls, same connection, alternating
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    root = Path(duckdb_extension_tpch.__file__).parent / "extensions"
    con.execute(f"LOAD '{next(root.rglob('*.duckdb_extension'))}'")
    con.execute(f"CALL dbgen(sf={args.sf})")
    con.execute(
        "CREATE OR REPLACE TABLE lineitem AS SELECT l.*, o.o_custkey AS l_custkey "
        "FROM lineitem l JOIN orders o ON l.l_orderkey = o.o_orderkey"
    )
    con.execute("SELECT 1").to_arrow_table()
    totals = [0.0, 0.0, 0.0]
    print(f"{'thresholds':34s} {'plain':>9s} {'exact count':>12s} {'bounded':>9s} {'ratio':>6s}")
    for name, sql in QUERIES.items():
        bounded = check_query(sql, SOURCES).sql
        exact = check_query(sql, SOURCES, bounded=False).sql
        runs: list[list[float]] = [[], [], []]
        for _ in range(args.repeat):
            for i, text in enumerate((sql, exact, bounded)):
                runs[i].append(timed_ms(con, text, checked=i > 0))
        p, e, b = (median(r) for r in runs)
        totals = [totals[0] + p, totals[1] + e, totals[2] + b]
        print(f"{name:34s} {p:7.1f}ms {e:10.1f}ms {b:7.1f}ms {b / p:5.2f}x")
    p, e, b = totals
    print(
        f"{'total':34s} {p:7.1f}ms {e:10.1f}ms {b:7.1f}ms {b / p:5.2f}x "
        f"(exact counting: {e / p:.2f}x; target <= 1.3x)"
    )

    print(f"{'DP release (bound, clamp, noise)':34s} {'plain':>9s} {'DP':>9s} {'ratio':>6s}")
    plain_total = dp_total = 0.0
    for name, (rows, spec, plain_sql) in DP_QUERIES.items():
        dp_sql = dp.aggregate_sql(check_dp(rows, SOURCES, spec).sql, spec)
        plain, released = [], []
        for _ in range(args.repeat):
            plain.append(timed_ms(con, plain_sql))
            for setting in ENGINE_SETTINGS:
                con.execute(setting)
            start = time.perf_counter()
            dp.release(con.execute(dp_sql).to_arrow_table(), spec)
            released.append((time.perf_counter() - start) * 1000)
        p, r = median(plain), median(released)
        plain_total += p
        dp_total += r
        print(f"{name:34s} {p:7.1f}ms {r:7.1f}ms {r / p:5.2f}x")
    print(
        f"{'total':34s} {plain_total:7.1f}ms {dp_total:7.1f}ms "
        f"{dp_total / plain_total:5.2f}x (target <= 1.3x)"
    )
    heavy = con.execute(
        "SELECT COUNT(*) FROM (SELECT l_custkey FROM lineitem GROUP BY 1 HAVING COUNT(*) > 100)"
    ).fetchone()
    print(f"customers with more than 100 line items (weighted down): {heavy[0] if heavy else 0}")


if __name__ == "__main__":
    main()
