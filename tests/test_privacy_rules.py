"""Rules, budgets and DP in the room's contract: proposals, releases, concurrency,
and differential privacy's calibration and noise."""

from __future__ import annotations

import json
import random
import statistics
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from cleanroom import Party, seal_dataset
from cleanroom.broker.desk import KeyDesk
from cleanroom.datasets.seal import unseal_key
from cleanroom.errors import AuthorizationError, GovernanceError
from cleanroom.governance.statements import request_job
from cleanroom.governance.views import room_view
from cleanroom.policy import dp
from cleanroom.policy.rules import DpSpec
from tests.rooms import CODE, Attempt, Clock, RoomFixture, make_ledger
from tests.test_policy import BANK_RULE, CUSTOMERS, MERCHANT_RULE, TRANSACTIONS

JOIN = "FROM transactions t JOIN customers c ON t.customer_hash = c.customer_hash"
DP_SQL = f"SELECT t.customer_hash AS person, c.segment AS segment, t.amount AS amount {JOIN}"
DP_SPEC: dict[str, Any] = {
    "epsilon": 1.0,
    "unit": "person",
    "max_contributions": 2,
    "group_by": {"segment": ["a", "b", "c"]},
    "aggregates": [
        {"name": "n", "function": "count"},
        {"name": "spend", "function": "sum", "column": "amount", "lower": 0, "upper": 100},
    ],
}


def _tables() -> dict[str, pa.Table]:
    con = duckdb.connect()
    customers = con.execute(
        "SELECT 'c' || i AS customer_hash, (['a','b','c'])[1 + i % 3] AS segment, "
        "CASE WHEN i % 2 = 0 THEN 'north' ELSE 'south' END AS region, (20 + i)::INT AS age, "
        "true AS opted_in, 'e' || i AS email FROM range(30) r(i)"
    ).to_arrow_table()
    transactions = con.execute(
        "SELECT i::BIGINT AS txn_id, 'c' || (i % 30) AS customer_hash, "
        "(i % 50)::DECIMAL(12,2) AS amount, 'grocery' AS category, "
        "TIMESTAMP '2026-03-01' AS ts FROM range(90) r(i)"
    ).to_arrow_table()
    return {"transactions": transactions, "customers": customers}


class RuleRoom:
    def __init__(
        self, tmp: Path, *, rules: dict[str, Any] | None = None, budget: float | None = None
    ) -> None:
        self.clock = Clock()
        self.fx = RoomFixture(make_ledger(tmp / "ledger", self.clock), self.clock)
        self.ledger = self.fx.ledger
        tables = _tables()
        rules = (
            rules
            if rules is not None
            else {
                "transactions": BANK_RULE.model_dump(),
                "customers": MERCHANT_RULE.model_dump(),
            }
        )
        schemas = {"transactions": TRANSACTIONS, "customers": CUSTOMERS}
        owners = {"transactions": "bank", "customers": "merchant"}
        # the contract approves the attested broker before it takes deposits
        self.accept(
            "analyst",
            {
                "type": "set_measurements",
                "measurements": [{"platform": "insecure-virtual", "value": CODE}],
                "allow_insecure_virtual": True,
            },
        )
        for name, owner in owners.items():
            party = self.fx.parties[owner]
            sealed = seal_dataset(
                tables[name], schema=schemas[name], owner=party, output=tmp / name, name=name
            )
            manifest = json.loads((tmp / name / "manifest.json").read_text())
            action: dict[str, Any] = {"type": "register_dataset", "manifest": manifest}
            if rules.get(name) is not None:
                action["rule"] = rules[name]
            pid = self.fx.propose(owner, action)
            for voter in {owner, "bank"}:
                self.fx.vote(voter, pid)
            key = unseal_key(tmp / name, sealed.manifest, party)
            self.fx.deposit(owner, name, manifest, key, ["insecure-virtual"])
            if budget is not None:
                self.accept(
                    owner, {"type": "set_privacy_budget", "dataset": name, "epsilon": budget}
                )
        self.desk = KeyDesk(self.ledger, broker=self.fx.broker)

    def accept(self, proposer: str, action: dict[str, Any]) -> str:
        pid = self.fx.propose(proposer, action)
        for voter in sorted(self.state.proposals[pid].approvers):
            name = next(n for n, p in self.fx.parties.items() if p.fingerprint == voter)
            self.fx.vote(name, pid)
        return pid

    @property
    def state(self) -> Any:
        return self.ledger.state(self.fx.room)

    def analysis(
        self, name: str, sql: str, dp_spec: dict[str, Any] | None = None, **extra: Any
    ) -> str:
        action = {
            "type": "add_analysis",
            "name": name,
            "language": "sql",
            "text": sql,
            "inputs": ["transactions", "customers"],
            "recipients": [self.fx.fp("bank")],
            **extra,
        }
        if dp_spec is not None:
            action["dp"] = dp_spec
        return self.accept("analyst", action)

    def request(self, name: str) -> str:
        digest = self.state.analyses[name].digest
        return self.fx.submit(
            request_job(self.fx.parties["analyst"], self.fx.room, name, digest, now=self.clock)
        )

    def release(self, job: str) -> dict[str, Any]:
        return Attempt(self.desk, self.fx.room, job, self.clock).release()


def test_a_leaking_analysis_is_refused_at_proposal_naming_the_rule(tmp_path: Path) -> None:
    room = RuleRoom(tmp_path)
    with pytest.raises(GovernanceError, match=r"identity column transactions\.customer_hash"):
        room.fx.propose(
            "analyst",
            {
                "type": "add_analysis",
                "name": "leak",
                "language": "sql",
                "text": "SELECT customer_hash, SUM(amount) FROM transactions GROUP BY 1",
                "inputs": ["transactions"],
                "recipients": [room.fx.fp("bank")],
            },
        )
    room.analysis("ok", f"SELECT c.segment, SUM(t.amount) AS s {JOIN} GROUP BY 1")
    assert room.state.analyses["ok"].status == "active"


def test_a_rule_that_allows_what_no_rule_may_is_refused(tmp_path: Path) -> None:
    room = RuleRoom(tmp_path)
    bad = {**BANK_RULE.model_dump(), "dimensions": ["customer_hash"]}
    with pytest.raises(GovernanceError, match="cannot be a dimension"):
        room.fx.propose(
            "bank", {"type": "set_analysis_rule", "dataset": "transactions", "rule": bad}
        )
    hashing = {**BANK_RULE.model_dump(), "scalar_functions": ["md5"]}
    with pytest.raises(GovernanceError, match="cannot be allowed"):
        room.fx.propose(
            "bank", {"type": "set_analysis_rule", "dataset": "transactions", "rule": hashing}
        )
    with pytest.raises(GovernanceError, match="only the dataset's owner"):
        room.fx.propose(
            "merchant",
            {
                "type": "set_analysis_rule",
                "dataset": "transactions",
                "rule": BANK_RULE.model_dump(),
            },
        )


def test_a_stricter_rule_stops_an_approved_analysis_at_release(tmp_path: Path) -> None:
    room = RuleRoom(tmp_path)
    room.analysis("by_category", "SELECT category, SUM(amount) AS s FROM transactions GROUP BY 1")
    stricter = {**BANK_RULE.model_dump(), "dimensions": ["ts"]}
    room.accept("bank", {"type": "set_analysis_rule", "dataset": "transactions", "rule": stricter})
    job = room.request("by_category")
    with pytest.raises(AuthorizationError, match="not a dimension"):
        room.release(job)
    assert room.state.jobs[job].status == "failed"


def test_recipients_are_the_intersection_of_the_rules(tmp_path: Path) -> None:
    merchant_only = {**MERCHANT_RULE.model_dump(), "recipients": [Party.create("x").fingerprint]}
    room = RuleRoom(
        tmp_path, rules={"transactions": BANK_RULE.model_dump(), "customers": merchant_only}
    )
    with pytest.raises(GovernanceError, match="does not allow"):
        room.fx.propose(
            "analyst",
            {
                "type": "add_analysis",
                "name": "spend",
                "language": "sql",
                "text": f"SELECT c.segment, SUM(t.amount) AS s {JOIN} GROUP BY 1",
                "inputs": ["transactions", "customers"],
                "recipients": [room.fx.fp("bank")],
            },
        )


def test_custom_rules_need_the_owners_own_approval(tmp_path: Path) -> None:
    custom = {"type": "custom", "disallowed_columns": ["email"]}
    room = RuleRoom(tmp_path, rules={"transactions": BANK_RULE.model_dump(), "customers": custom})
    with pytest.raises(GovernanceError, match="may never be output"):
        room.fx.propose(
            "analyst",
            {
                "type": "add_analysis",
                "name": "emails",
                "language": "sql",
                "text": "SELECT email FROM customers",
                "inputs": ["customers"],
                "recipients": [room.fx.fp("bank")],
            },
        )
    # a majority constitution lets an analysis pass without the merchant's vote
    room.accept("bank", {"type": "change_constitution", "constitution": {"rule": "majority"}})
    pid = room.fx.propose(
        "analyst",
        {
            "type": "add_analysis",
            "name": "regions",
            "language": "sql",
            "text": "SELECT region, COUNT(*) AS n FROM customers GROUP BY region",
            "inputs": ["customers"],
            "recipients": [room.fx.fp("bank")],
        },
    )
    room.fx.vote("bank", pid)
    room.fx.vote("analyst", pid)
    assert room.state.proposals[pid].status == "accepted"
    job = room.request("regions")
    with pytest.raises(AuthorizationError, match="owner must approve"):
        room.release(job)


def test_budgets_require_dp_and_are_charged_by_the_release(tmp_path: Path) -> None:
    room = RuleRoom(tmp_path, budget=2.5)
    with pytest.raises(GovernanceError, match="only differentially private"):
        room.fx.propose(
            "analyst",
            {
                "type": "add_analysis",
                "name": "plain",
                "language": "sql",
                "text": f"SELECT c.segment, SUM(t.amount) AS s {JOIN} GROUP BY 1",
                "inputs": ["transactions", "customers"],
                "recipients": [room.fx.fp("bank")],
            },
        )
    room.analysis("dp", DP_SQL, DP_SPEC)
    room.release(room.request("dp"))
    room.release(room.request("dp"))
    summary = {d["name"]: d["budget"] for d in room_view(room.state)["datasets"]}
    assert summary["transactions"]["spent"] == pytest.approx(2.0)
    assert summary["customers"]["remaining"] == pytest.approx(0.5)
    job = room.request("dp")
    with pytest.raises(AuthorizationError, match="budget of 'transactions' is exhausted"):
        room.release(job)
    assert room.state.datasets["transactions"].spent == pytest.approx(2.0)


def test_concurrent_jobs_never_overspend(tmp_path: Path) -> None:
    room = RuleRoom(tmp_path, budget=3.0)
    room.analysis("dp", DP_SQL, DP_SPEC)
    jobs = [room.request("dp") for _ in range(8)]
    outcomes: list[str] = []

    def attempt(job: str) -> None:
        try:
            room.release(job)
            outcomes.append("released")
        except AuthorizationError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=attempt, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("released") == 3
    assert all("exhausted" in o for o in outcomes if o != "released")
    assert room.state.datasets["customers"].spent == pytest.approx(3.0)
    assert sum(1 for j in room.state.jobs.values() if j.status == "running") == 3


DP_REFUSED = {
    "aggregates in the row query": (
        "SELECT t.customer_hash AS person, c.segment AS segment, SUM(t.amount) AS amount "
        f"{JOIN} GROUP BY 1, 2",
        "no GROUP",
    ),
    "a unit that is not an identity": (
        f"SELECT t.category AS person, c.segment AS segment, t.amount AS amount {JOIN}",
        "identity column",
    ),
    "a group key that is not a dimension": (
        f"SELECT t.customer_hash AS person, c.email AS segment, t.amount AS amount {JOIN}",
        "not a dimension",
    ),
    "a value that may not be summed": (
        f"SELECT t.customer_hash AS person, c.segment AS segment, t.txn_id AS amount {JOIN}",
        "may not be summed",
    ),
    "an extra output column": (
        "SELECT t.customer_hash AS person, c.segment AS segment, t.amount AS amount, c.email "
        f"{JOIN}",
        "must output exactly",
    ),
    "a filter on an identity": (
        f"SELECT t.customer_hash AS person, c.segment AS segment, t.amount AS amount {JOIN} "
        "WHERE t.customer_hash = 'c1'",
        "identity column",
    ),
    "a CTE": (
        "WITH x AS (SELECT customer_hash AS person, category AS segment, amount FROM transactions) "
        "SELECT person, segment, amount FROM x",
        "one plain SELECT",
    ),
}


@pytest.mark.parametrize("case", sorted(DP_REFUSED))
def test_dp_row_queries_are_checked(tmp_path: Path, case: str) -> None:
    room = RuleRoom(tmp_path, budget=5.0)
    sql, reason = DP_REFUSED[case]
    with pytest.raises(GovernanceError, match=reason):
        room.analysis("dp", sql, DP_SPEC)


# -- DP mechanics: calibration, noise, contribution bounding -------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"group_by": {"segment": []}}, "1 to 10,000 distinct public keys"),
        ({"group_by": {"segment": ["a", "a"]}}, "1 to 10,000 distinct public keys"),
        (
            {"group_by": {"segment": list(range(400)), "region": list(range(400))}},
            "more than 100,000 groups",
        ),
        (
            {
                "aggregates": [
                    {"name": "s", "function": "sum", "column": "amount", "lower": 5, "upper": 1}
                ]
            },
            "lower bound must be below upper bound",
        ),
        ({"epsilon": 0}, "greater than 0"),
        ({"delta": 0.1}, "less than or equal to 0"),
    ],
)
def test_dp_specifications_are_validated(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        DpSpec.model_validate({**DP_SPEC, **change})


def test_noise_is_calibrated_to_epsilon_and_sensitivity() -> None:
    spec = DpSpec.model_validate({**DP_SPEC, "epsilon": 0.8, "max_contributions": 3})
    count, spend = dp.plan(spec)
    assert count.epsilon == pytest.approx(0.4)
    assert count.sensitivity == 3
    assert spend.sensitivity == 3 * 100
    assert spend.scale == pytest.approx(300 / 0.4)
    for statistic in (count, spend):
        measurement = dp._measurement(statistic)
        assert measurement.map(statistic.sensitivity) == pytest.approx(statistic.epsilon)


def test_the_noise_has_the_laplace_spread_the_plan_says() -> None:
    spec = DpSpec.model_validate({**DP_SPEC, "epsilon": 2.0, "group_by": {}})
    exact = pa.table({"__count": [1000], "__sum_spend": [5000.0]})
    releases = [dp.release(exact, spec).to_pylist()[0] for _ in range(3000)]
    _, spend = dp.plan(spec)
    spread = statistics.pstdev([r["spend"] for r in releases])
    assert spread == pytest.approx(2**0.5 * spend.scale, rel=0.1)  # Laplace: sd = sqrt(2) b
    standard_error = 2**0.5 * spend.scale / len(releases) ** 0.5
    assert statistics.fmean([r["spend"] for r in releases]) == pytest.approx(
        5000, abs=5 * standard_error
    )
    counts = [r["n"] for r in releases]
    assert statistics.fmean(counts) == pytest.approx(1000, abs=2)


def test_every_declared_key_is_released_and_undeclared_ones_are_not() -> None:
    spec = DpSpec.model_validate(DP_SPEC)
    exact = pa.table({"segment": ["a", "zzz"], "__count": [10, 5], "__sum_spend": [100.0, 50.0]})
    released = dp.release(exact, spec)
    assert released.column("segment").to_pylist() == ["a", "b", "c"]


def test_contributions_are_bounded_per_person_inside_the_query() -> None:
    spec = DpSpec.model_validate({**DP_SPEC, "max_contributions": 2})
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE rows AS SELECT 'p' || (i % 3) AS person, 'a' AS segment, "
        "CASE WHEN i % 3 = 0 THEN 1000 ELSE 10 END AS amount FROM range(300) r(i)"
    )
    (segment, count, total) = con.execute(
        dp.aggregate_sql("SELECT person, segment, amount FROM rows", spec)
    ).fetchone()
    assert segment == "a"
    assert count == pytest.approx(6)  # 3 people x a weight of at most 2
    assert total == pytest.approx(2 * 100 + 4 * 10)  # the heavy person's 1000s clamped to 100


def _exact(con: duckdb.DuckDBPyConnection, spec: DpSpec, without: str | None) -> list[float]:
    rows = "SELECT person, segment, amount FROM people WHERE person IS DISTINCT FROM ?"
    sql = dp.aggregate_sql(rows, spec)
    found = {r[0]: r[1:] for r in con.execute(sql, [without]).fetchall()}
    return [v for key in ("a", "b", "c") for v in found.get(key, (0.0, 0.0))]


def test_one_person_moves_the_exact_aggregates_by_at_most_the_sensitivity() -> None:
    """Neighbouring rooms (one person removed) on random data: the weighted
    counts move by at most k in total over all groups and the clamped sums by
    at most k * max(|lower|, |upper|), whatever that person's rows were;
    undeclared groups use up the person's weight too."""
    rng = random.Random(7)
    spec = DpSpec.model_validate({**DP_SPEC, "max_contributions": 5})
    k, bound = 5, 100
    con = duckdb.connect()
    for _ in range(8):
        people = [f"p{i}" for i in range(12)]
        rows = [
            (person, rng.choice(["a", "b", "c", "zzz"]), rng.choice([-50, 7, 99, 5000]))
            for person in people
            for _ in range(rng.choice([1, 2, 5, 6, 40, 300]))
        ]
        con.execute("CREATE OR REPLACE TABLE people (person VARCHAR, segment VARCHAR, amount INT)")
        con.executemany("INSERT INTO people VALUES (?, ?, ?)", rows)
        everyone = _exact(con, spec, None)
        for person in people:
            neighbour = _exact(con, spec, person)
            counts = sum(abs(x - y) for x, y in zip(everyone[0::2], neighbour[0::2], strict=True))
            sums = sum(abs(x - y) for x, y in zip(everyone[1::2], neighbour[1::2], strict=True))
            n = sum(1 for r in rows if r[0] == person)
            in_declared = sum(1 for r in rows if r[0] == person and r[1] != "zzz")
            assert counts == pytest.approx(in_declared * min(1.0, k / n))
            assert counts <= k + 1e-9
            assert sums <= k * bound + 1e-6


def test_room_limits_are_a_contract_change_and_the_stricter_limits_win(tmp_path: Path) -> None:
    from cleanroom.enclave.runtime import room_limits  # noqa: PLC0415
    from cleanroom.enclave.sql import Limits  # noqa: PLC0415

    room = RuleRoom(tmp_path)
    limits = {"type": "set_limits", "time_s": 30, "memory_mb": 512, "max_result_rows": 1000}
    room.accept("analyst", limits)
    assert room_view(room.state)["limits"] == limits
    service = Limits(time_s=600, memory="4GB", max_result_rows=1_000_000)
    applied = room_limits(service, room.state.limits)
    assert (applied.time_s, applied.memory, applied.max_result_rows) == (30, "512MB", 1000)
    looser = room_limits(Limits(time_s=10, memory="256MB"), room.state.limits)
    assert (looser.time_s, looser.memory) == (10, "256MB")
