"""The SQL job kind's sandbox: approved SELECTs run; everything else is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from cleanroom.datasets.parquet import connect, write_encrypted
from cleanroom.enclave.sql import Input, Limits, QueryError, run_sql


@pytest.fixture
def inputs(tmp_path: Path) -> list[Input]:
    made = []
    for name, table in (
        ("transactions", pa.table({"id": [1, 2, 2, 3], "amount": [10, 20, 30, 40]})),
        ("my customers.v1", pa.table({"id": [1, 2, 3], "segment": ["a", "b", "a"]})),
    ):
        key = os.urandom(32)
        path = tmp_path / f"{len(made)}.parquet"
        con = connect()
        write_encrypted(con, table.to_reader(), path, key)
        con.close()
        made.append(Input(name, path, key))
    return made


def run(sql: str, inputs: list[Input], tmp: Path, **limits: object) -> pa.Table:
    result = run_sql(sql, inputs, Limits(**limits), tmp)  # type: ignore[arg-type]
    assert set(result.phases) == {"prepare_ms", "query_ms"}
    return result.table


def test_an_approved_join_runs_over_encrypted_inputs(inputs: list[Input], tmp_path: Path) -> None:
    result = run(
        "SELECT c.segment, sum(t.amount) AS total FROM transactions t "
        'JOIN "my customers.v1" c USING (id) GROUP BY ALL ORDER BY 1',
        inputs,
        tmp_path,
    )
    assert result.to_pylist() == [{"segment": "a", "total": 50}, {"segment": "b", "total": 50}]
    commented = "-- offers\n/* v2 */ (SELECT count(*) AS n FROM transactions)"
    assert run(commented, inputs, tmp_path).to_pylist() == [{"n": 4}]
    assert run("WITH x AS (SELECT 1 AS a) SELECT a FROM x", inputs, tmp_path).num_rows == 1


ESCAPES = {
    "read a local file": "SELECT * FROM read_csv('/etc/passwd')",
    "read an input without its view": "SELECT * FROM read_parquet('{{path}}')",
    "write a file": "COPY transactions TO '/tmp/leak.csv'",
    "attach a database": "ATTACH '/tmp/other.db'",
    "install an extension": "INSTALL tpch",
    "load an extension": "LOAD tpch",
    "turn access back on": "SET enable_external_access = true",
    "two statements": "SELECT 1; SELECT 2",
    "create a table": "CREATE TABLE x AS SELECT 1",
    "a pragma": "PRAGMA database_list",
    "a show": "SHOW TABLES",
    "a describe": "DESCRIBE transactions",
    "not SQL": "SELEC nothing",
    "export": "EXPORT DATABASE '/tmp/dump'",
    "glob the disk": "SELECT * FROM glob('/etc/*')",
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escapes_from_the_sandbox_are_refused(
    inputs: list[Input], tmp_path: Path, case: str
) -> None:
    sql = ESCAPES[case].replace("{path}", str(inputs[0].path))
    with pytest.raises(QueryError):
        run(sql, inputs, tmp_path)
    assert not Path("/tmp/leak.csv").exists()


def test_an_expensive_query_is_stopped_at_its_time_limit(
    inputs: list[Input], tmp_path: Path
) -> None:
    slow = "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"
    with pytest.raises(QueryError, match="time limit"):
        run(slow, inputs, tmp_path, time_s=0.5)


def test_results_over_the_limits_are_refused(inputs: list[Input], tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="more than 10 rows"):
        run("SELECT * FROM range(11)", inputs, tmp_path, max_result_rows=10)
    with pytest.raises(QueryError, match="larger than"):
        run("SELECT repeat('x', 10000) FROM range(1000)", inputs, tmp_path, max_result_bytes=1000)
    assert run("SELECT * FROM range(10)", inputs, tmp_path, max_result_rows=10).num_rows == 10


def test_a_query_over_its_memory_limit_fails_cleanly(inputs: list[Input], tmp_path: Path) -> None:
    greedy = "SELECT list(i) AS l FROM range(30000000) t(i)"
    with pytest.raises(QueryError, match=r"memory|failed"):
        run(greedy, inputs, tmp_path, memory="64MB", max_temp="64MB")


def test_a_wrong_key_is_a_failed_query_not_plaintext(inputs: list[Input], tmp_path: Path) -> None:
    swapped = [Input(inputs[0].name, inputs[0].path, inputs[1].key), inputs[1]]
    with pytest.raises(QueryError):
        run("SELECT * FROM transactions", swapped, tmp_path)


def test_a_dp_run_reports_no_phases_and_ends_on_a_time_bucket(
    inputs: list[Input], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DP job's timing must not tell neighbouring datasets apart: no query or
    noise timings, and the run is padded to the end of its bucket."""
    from cleanroom.enclave import runtime  # noqa: PLC0415 - the DP kind lives with the runtime
    from cleanroom.governance.outcomes import time_bucket  # noqa: PLC0415
    from cleanroom.policy.rules import DpSpec  # noqa: PLC0415

    spec = DpSpec.model_validate(
        {
            "epsilon": 1.0,
            "unit": "id",
            "aggregates": [
                {"name": "s", "function": "sum", "column": "amount", "lower": 0, "upper": 50}
            ],
        }
    )
    slept: list[float] = []
    ticks = iter(range(10_000))
    # a clock that moves 37 ms per reading: the run must be padded to a bucket's end
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(ticks) * 0.037)
    monkeypatch.setattr(runtime.time, "sleep", slept.append)
    kind = runtime.dp_kind(spec)
    result = kind("SELECT id, amount FROM transactions", inputs, Limits(), tmp_path)
    assert result.phases == {}
    assert result.table.column_names == ["s"]
    assert len(slept) == 1
    readings = [37 * m for m in range(1, 100)]
    assert any(
        abs(e + slept[0] * 1000 - time_bucket(e)) < 1e-6 and slept[0] > 0 for e in readings
    ), slept
