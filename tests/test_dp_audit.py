"""Empirical audit of the DP release: the mechanism's epsilon, measured from outside.

For each accepted row-query shape, two neighbouring rooms differ in one person
("target") with the most a person can move the statistics (k rows at the
clamping bound, or more than k rows, weighted k / n). Each room's exact
aggregates are computed by the real path, ``check_dp`` -> ``dp.aggregate_sql``
-> DuckDB, both in process and as the enclave runs a job
(``cleanroom.enclave.sql.run_sql`` over encrypted Parquet), and must agree;
then ``dp.release`` (OpenDP's Laplace noise) is drawn many times on each side
and the auditor in ``tests/dp_audit.py`` lower-bounds the epsilon each
released statistic really spends. The bound must not exceed the epsilon share
``dp.plan`` declares for it (a mean is post-processing of the count and its
sum, so it is held to both shares).

The SQL is deterministic: only the noise is random, so the exact table is
computed a few times per room (and checked to be the same) and the releases
re-noise it, as the enclave would on each run of the job. The data are
seeded; OpenDP's noise is cryptographically random and cannot be seeded, so
the outcome is statistical:

- each bound holds at one-sided confidence 1 - ALPHA = 99.99% (Clopper-Pearson,
  ALPHA / 2 on each rate), so a correct mechanism fails a statistic's check
  with probability at most 1e-4 even when its test is the best one possible,
  and the whole file (12 such checks) at most 0.12% (a union bound); the
  chosen tests are no better than the best, so in practice less;
- the self-checks break the mechanism (the person's rows not weighted; the
  noise at half its scale) and require the bound to exceed the declared share
  by a quarter: with 2,000 releases per side it comes out at 1.5-4x the share.

RELEASES (per side, counted; a quarter as many again, at least 500, calibrate
the test) is read from CLEANROOM_DP_AUDIT_RELEASES: ``make audit-dp`` runs a
larger audit. One release takes 0.25-0.8 ms (two OpenDP measurements built and
one draw per statistic and declared group), so the default run takes ~30 s.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from cleanroom.datasets.parquet import connect, write_encrypted
from cleanroom.enclave.sql import Input, Limits, run_sql
from cleanroom.policy import dp
from cleanroom.policy.check import check_dp
from cleanroom.policy.rules import DpSpec
from tests.dp_audit import Finding, Key, audit, clopper_pearson, epsilon_lower_bound
from tests.test_policy import SOURCES

DEFAULT_RELEASES = 2000
RELEASES = int(os.environ.get("CLEANROOM_DP_AUDIT_RELEASES", str(DEFAULT_RELEASES)))
ALPHA = 1e-4
SEED = 20261126
PERSON = "target"
REPORT: list[str] = []

JOIN = (
    "SELECT t.customer_hash AS person, c.segment AS segment, t.amount AS amount "
    "FROM transactions t JOIN customers c ON t.customer_hash = c.customer_hash"
)


@dataclass(frozen=True)
class Case:
    """A row query and its spec; the person's rows; what each audited statistic reads."""

    spec: DpSpec
    sql: str
    transactions: list[tuple[str, int]]  # the person's (category, amount) rows
    segments: list[str]  # the person's customer rows
    audited: dict[str, dict[str, list[Key]]]  # statistic -> output column -> group keys


def _spec(epsilon: float, k: int, aggregates: list[dict[str, Any]], **groups: list[str]) -> DpSpec:
    return DpSpec.model_validate(
        {
            "epsilon": epsilon,
            "unit": "person",
            "max_contributions": k,
            "group_by": groups,
            "aggregates": aggregates,
        }
    )


COUNT = {"name": "n", "function": "count"}
SPEND = {"name": "spend", "function": "sum", "column": "amount", "lower": 0, "upper": 100}

CASES = {
    # k rows: the count moves by k
    "ungrouped count": Case(
        _spec(1.0, 3, [COUNT]),
        "SELECT customer_hash AS person FROM transactions",
        [("grocery", 50)] * 3,
        ["a"],
        {"n": {"n": [()]}},
    ),
    # k rows over the upper bound: the clamped sum moves by k * 100
    "ungrouped sum": Case(
        _spec(1.0, 3, [SPEND]),
        "SELECT customer_hash AS person, amount FROM transactions",
        [("grocery", 250)] * 3,
        ["a"],
        {"spend": {"spend": [()]}},
    ),
    # a group only the person is in: the mean's worst case (noisy sum / noisy count)
    "mean (a group of one)": Case(
        _spec(
            1.0,
            3,
            [
                COUNT,
                {"name": "avg", "function": "mean", "column": "amount", "lower": 0, "upper": 100},
            ],
            category=["grocery", "lottery"],
        ),
        "SELECT customer_hash AS person, category, amount FROM transactions",
        [("lottery", 100)] * 3,
        ["a"],
        {"n": {"n": [("lottery",)]}, "avg": {"avg": [("lottery",)]}},
    ),
    # declared keys (fuel is not declared: its rows are dropped)
    "grouped": Case(
        _spec(1.0, 3, [COUNT, SPEND], category=["grocery", "travel"]),
        "SELECT customer_hash AS person, category, amount FROM transactions",
        [("travel", 150)] * 3,
        ["a"],
        {"n": {"n": [("travel",)]}, "spend": {"spend": [("travel",)]}},
    ),
    # k rows over two groups: k in total
    "split over groups": Case(
        _spec(1.0, 4, [COUNT, SPEND], category=["grocery", "travel"]),
        "SELECT customer_hash AS person, category, amount FROM transactions",
        [("grocery", 130), ("grocery", 130), ("travel", 200), ("travel", 200)],
        ["a"],
        {
            "n": {"n": [("grocery",), ("travel",)]},
            "spend": {"spend": [("grocery",), ("travel",)]},
        },
    ),
    # 10 rows, k = 2: each weighs 1/5; a negative lower bound sets the sensitivity
    "n > k rows (weighted k/n)": Case(
        _spec(
            1.0,
            2,
            [COUNT, {**SPEND, "lower": -150, "upper": 100}],
            category=["grocery", "travel"],
        ),
        "SELECT customer_hash AS person, category, amount FROM transactions",
        [("travel", -400)] * 6 + [("grocery", -400)] * 4,
        ["a"],
        {
            "n": {"n": [("grocery",), ("travel",)]},
            "spend": {"spend": [("grocery",), ("travel",)]},
        },
    ),
    # rows in both inputs: 3 transactions x 2 customer rows = 6 joined rows, k = 3 (each
    # weighs 1/2); segment c is not declared
    "inner join of two inputs": Case(
        _spec(2.0, 3, [COUNT, SPEND], segment=["a", "b"]),
        JOIN,
        [("grocery", 180)] * 3,
        ["a", "b"],
        {"n": {"n": [("a",), ("b",)]}, "spend": {"spend": [("a",), ("b",)]}},
    ),
}


# -- the two neighbouring rooms --------------------------------------------------------------


def _rooms(case: Case) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """(D, D'): seeded base data, and the same with the person's rows added."""
    rng = random.Random(SEED)
    customers: list[dict[str, Any]] = []
    transactions: list[dict[str, Any]] = []
    start = datetime(2026, 3, 1)
    for i in range(40):
        name = f"c{i:02d}"
        customers.append(
            {
                "customer_hash": name,
                "segment": rng.choice("abc"),
                "region": rng.choice(["north", "south"]),
                "age": rng.randint(20, 70),
                "opted_in": rng.random() < 0.5,
                "email": f"{name}@example.com",
            }
        )
        # 1 to 6 rows: some people are over k and weighted on both sides
        transactions.extend(
            {
                "customer_hash": name,
                "amount": Decimal(rng.randint(-2000, 12000)) / 100,
                "category": rng.choice(["grocery", "travel", "fuel"]),
            }
            for _ in range(rng.randint(1, 6))
        )
    person_customers = [
        {**customers[0], "customer_hash": PERSON, "segment": s, "email": "t@example.com"}
        for s in case.segments
    ]
    person_transactions = [
        {"customer_hash": PERSON, "amount": Decimal(amount), "category": category}
        for category, amount in case.transactions
    ]

    def tables(people: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, pa.Table]:
        rows = [
            {"txn_id": i, **row, "ts": start + timedelta(hours=i)} for i, row in enumerate(rows)
        ]
        return {
            "transactions": pa.Table.from_pylist(
                rows, schema=SOURCES["transactions"].schema.arrow_schema()
            ),
            "customers": pa.Table.from_pylist(
                people, schema=SOURCES["customers"].schema.arrow_schema()
            ),
        }

    return (
        tables(customers, transactions),
        tables(customers + person_customers, transactions + person_transactions),
    )


def _in_process(tables: dict[str, pa.Table], sql: str) -> pa.Table:
    con = duckdb.connect()
    for name, table in tables.items():
        con.register("source", table)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM source')
        con.unregister("source")
    return con.execute(sql).to_arrow_table()


def _enclave(tables: dict[str, pa.Table], sql: str, work: Path) -> pa.Table:
    """As the enclave runs the job: each input an encrypted Parquet file under its own key."""
    work.mkdir()
    inputs = []
    for name, table in tables.items():
        key = os.urandom(32)
        path = work / f"{name}.parquet"
        con = connect()
        write_encrypted(con, table.to_reader(), path, key)
        con.close()
        inputs.append(Input(name, path, key))
    return run_sql(sql, inputs, Limits(threads=1), work).table


def _rows(table: pa.Table, groups: list[str]) -> dict[Key, dict[str, float]]:
    return {
        tuple(r[g] for g in groups): {k: float(v) for k, v in r.items() if k not in groups}
        for r in table.to_pylist()
    }


def _same(tables: list[pa.Table], groups: list[str]) -> None:
    first = _rows(tables[0], groups)
    for other in tables[1:]:
        rows = _rows(other, groups)
        assert rows.keys() == first.keys()
        for key, values in rows.items():
            assert values == pytest.approx(first[key], rel=1e-12, abs=1e-9)


@dataclass(frozen=True)
class Prepared:
    checked_sql: str
    without: pa.Table  # exact aggregates of D
    with_: pa.Table  # and of D'
    rooms: tuple[dict[str, pa.Table], dict[str, pa.Table]]


@pytest.fixture(scope="module")
def prepare(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Prepared]:
    """Each case's exact aggregates on both rooms, computed once per module."""
    prepared: dict[str, Prepared] = {}

    def run(name: str) -> Prepared:
        if name not in prepared:
            case = CASES[name]
            checked = check_dp(case.sql, SOURCES, case.spec)
            sql = dp.aggregate_sql(checked.sql, case.spec)
            rooms = _rooms(case)
            groups = list(case.spec.group_by)
            exact = []
            for side, tables in zip(("without", "with"), rooms, strict=True):
                work = tmp_path_factory.mktemp(f"{side}-enclave")
                runs = [_in_process(tables, sql), _in_process(tables, sql)]
                runs.append(_enclave(tables, sql, work / "job"))
                _same(runs, groups)  # deterministic, and the same as the enclave's
                exact.append(runs[-1])
            prepared[name] = Prepared(checked.sql, exact[0], exact[1], rooms)
        return prepared[name]

    return run


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if REPORT:
        header = f"DP audit: {RELEASES} releases per side (the self-checks {DEFAULT_RELEASES}) "
        header += f"+ a quarter as many to calibrate; confidence {1 - ALPHA:.2%}"
        print("\n" + "\n".join([header, *REPORT]))  # noqa: T201 - make audit-dp shows the table


# -- what each statistic may spend -------------------------------------------------------------


def _internal(spec: DpSpec, statistic: str) -> list[str]:
    """The noisy statistics a released output is computed from."""
    function = next(a.function for a in spec.aggregates if a.name == statistic)
    if function == "count":
        return ["__count"]
    if function == "sum":
        return [f"__sum_{statistic}"]
    return ["__count", f"__sum_{statistic}"]


def _share(spec: DpSpec, statistic: str) -> float:
    plan = {s.name: s for s in dp.plan(spec)}
    return sum(plan[name].epsilon for name in _internal(spec, statistic))


def _run(
    case: Case,
    without: pa.Table,
    with_: pa.Table,
    *,
    releases: int,
    label: str,
    shares: dict[str, float],
) -> dict[str, Finding]:
    """Audit every statistic of a case on releases of the two exact tables; report."""
    started = time.perf_counter()
    findings = audit(
        lambda: dp.release(without, case.spec),
        lambda: dp.release(with_, case.spec),
        list(case.spec.group_by),
        case.audited,
        releases=releases,
        calibration=max(500, releases // 4),
        alpha=ALPHA,
    )
    seconds = time.perf_counter() - started
    total = 2 * (releases + max(500, releases // 4))
    for name, found in findings.items():
        REPORT.append(
            f"| {label} | {name} | {shares[name]:g} | "
            f"{found.epsilon_lower_bound:.3f} | {found.estimate:.3f} | "
            f"{found.true_positives}/{found.false_positives} | {total / seconds:,.0f}/s, "
            f"{seconds:.1f} s |"
        )
    return findings


# -- the auditor itself --------------------------------------------------------------------------


def test_clopper_pearson_matches_known_values() -> None:
    # the textbook interval for 5 of 10 at 95% two-sided
    assert clopper_pearson(5, 10, 0.025) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    # closed forms at the edges: (1 - upper)^n = alpha, lower^n = alpha
    assert clopper_pearson(0, 100, 0.05) == pytest.approx((0.0, 1 - 0.05 ** (1 / 100)))
    assert clopper_pearson(100, 100, 0.05) == pytest.approx((0.05 ** (1 / 100), 1.0))
    assert clopper_pearson(1, 20, 0.05)[0] == pytest.approx(1 - 0.95 ** (1 / 20))
    # no evidence, no bound; a perfect test on few trials, a small one
    assert epsilon_lower_bound(500, 500, 1000, ALPHA) == 0.0
    assert 0 < epsilon_lower_bound(1000, 0, 1000, ALPHA) < math.log(1000)


# -- the mechanism keeps its promise -------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_the_release_spends_no_more_than_its_declared_epsilon(
    prepare: Callable[[str], Prepared], name: str
) -> None:
    case = CASES[name]
    prepared = prepare(name)
    groups = list(case.spec.group_by)
    without, with_ = _rows(prepared.without, groups), _rows(prepared.with_, groups)
    # the rooms are worst-case neighbours: the person's cells move by the sensitivity in all
    # (so the audit can be tight), and nothing else moves (an absent group is all zeros)
    zero = dict.fromkeys(next(iter(with_.values())), 0.0)
    for key in with_.keys() - without.keys():
        without[key] = zero
    assert without.keys() == with_.keys()
    for statistic in dp.plan(case.spec):
        moved = [abs(with_[key][statistic.name] - without[key][statistic.name]) for key in with_]
        assert sum(moved) == pytest.approx(statistic.sensitivity), statistic
    person = {key for cells in case.audited.values() for keys in cells.values() for key in keys}
    moved_cells = {key for key in with_ if with_[key] != pytest.approx(without[key], abs=1e-9)}
    assert moved_cells == person
    shares = {statistic: _share(case.spec, statistic) for statistic in case.audited}
    found = _run(
        case, prepared.without, prepared.with_, releases=RELEASES, label=name, shares=shares
    )
    for statistic, finding in found.items():
        assert finding.epsilon_lower_bound <= shares[statistic], finding


# -- and the audit would see it if it did not ----------------------------------------------------


def _unweighted(prepared: Prepared, spec: DpSpec, room: dict[str, pa.Table]) -> pa.Table:
    """The exact aggregates with every row weighing 1: no contribution bound."""
    (aggregate,) = (a for a in spec.aggregates if a.function == "sum")
    lower, upper = aggregate.bounds
    groups = ", ".join(spec.group_by)
    return _in_process(
        room,
        f"SELECT {groups}, COUNT(*)::DOUBLE AS __count, "
        f"SUM(LEAST(GREATEST(amount, {lower}), {upper}))::DOUBLE AS __sum_{aggregate.name} "
        f"FROM ({prepared.checked_sql}) GROUP BY {groups}",
    )


def test_the_audit_sees_a_person_counted_without_the_contribution_bound(
    prepare: Callable[[str], Prepared],
) -> None:
    name = "n > k rows (weighted k/n)"
    case = CASES[name]
    prepared = prepare(name)
    without, with_ = (_unweighted(prepared, case.spec, room) for room in prepared.rooms)
    groups = list(case.spec.group_by)
    moved = sum(
        _rows(with_, groups)[key]["__count"] - _rows(without, groups)[key]["__count"]
        for key in _rows(with_, groups)
    )
    assert moved == 10  # five times k
    shares = {statistic: _share(case.spec, statistic) for statistic in case.audited}
    found = _run(
        case,
        without,
        with_,
        releases=DEFAULT_RELEASES,
        label=f"BROKEN, unweighted: {name}",
        shares=shares,
    )
    for statistic, finding in found.items():
        assert finding.epsilon_lower_bound > 1.25 * shares[statistic], finding


@pytest.mark.parametrize("name", ["ungrouped count", "ungrouped sum"])
def test_the_audit_sees_noise_at_half_its_scale(
    prepare: Callable[[str], Prepared], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    case = CASES[name]
    prepared = prepare(name)
    shares = {statistic: _share(case.spec, statistic) for statistic in case.audited}
    declared = dp.plan  # the declared epsilon (and shares) stay as they were

    def doubled(spec: DpSpec) -> list[dp.Statistic]:
        # scale = sensitivity / epsilon: twice the epsilon, half the noise
        return [replace(s, epsilon=2 * s.epsilon) for s in declared(spec)]

    monkeypatch.setattr(dp, "plan", doubled)
    found = _run(
        case,
        prepared.without,
        prepared.with_,
        releases=DEFAULT_RELEASES,
        label=f"BROKEN, half noise: {name}",
        shares=shares,
    )
    for statistic, finding in found.items():
        assert finding.epsilon_lower_bound > 1.25 * shares[statistic], finding
