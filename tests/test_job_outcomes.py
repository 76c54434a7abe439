"""What a job publishes about its outcome, as attacks: a failure is a category,
never an error's text; sizes and timings are coarse buckets.

End to end (a real service and enclave, a query whose DuckDB error quotes a
customer's total): ``tests/test_jobs.py``,
``test_a_query_error_quoting_data_publishes_only_its_category``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cleanroom.enclave.__main__ as enclave_main
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.enclave.failures import JobFailedError, category_of, engine_category
from cleanroom.enclave.sql import Limits, QueryError, run_sql
from cleanroom.errors import (
    AttestationError,
    DeserializationError,
    ForkError,
    GovernanceError,
    IntegrityError,
    OperationalError,
    PolicyError,
)
from cleanroom.governance import parse_statement, sign_statement
from cleanroom.governance.outcomes import (
    BYTES_BUCKET,
    FAILURE_CATEGORIES,
    ROWS_BUCKET,
    TIME_BUCKET_MS,
    bucket,
    bytes_bucket,
    is_bucket,
    rows_bucket,
    time_bucket,
)
from cleanroom.governance.statements import STATEMENT_TYP
from cleanroom.identities.keystore import Party
from cleanroom.service.jobs import JobRunner, RunnerSettings, reported_category
from tests.test_key_release import JobRoom, _complete

VALUE = "987654321987"  # what the attacker wants to read
LEAKY = f"SELECT CAST(x AS TINYINT) AS y FROM (VALUES ({VALUE})) t(x)"


def _engine_error(sql: str) -> duckdb.Error:
    with pytest.raises(duckdb.Error) as caught:
        duckdb.connect().execute(sql).fetchall()
    return caught.value


def _query_error(sql: str, tmp_path: Path, limits: Limits | None = None) -> QueryError:
    with pytest.raises(QueryError) as caught:
        run_sql(sql, [], limits or Limits(), tmp_path)
    return caught.value


# -- the mapping: by type, one case per category -------------------------------------------

ENGINE_CASES = {
    "cast": (LEAKY, "conversion error"),
    "string cast": ("SELECT CAST(x AS INTEGER) FROM (VALUES ('yacht')) t(x)", "conversion error"),
    "overflow": ("SELECT x + 1 FROM (VALUES (2147483647::INTEGER)) t(x)", "conversion error"),
    "error()": (f"SELECT error('{VALUE}')", "conversion error"),
    "unknown column": ("SELECT nosuch", "query refused"),
    "unparsable": ("SELEC 1", "query refused"),
}


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_engine_errors_map_to_their_category_by_type(case: str) -> None:
    sql, category = ENGINE_CASES[case]
    error = _engine_error(sql)
    assert engine_category(error) == category
    assert category_of(error) == category


EXCEPTION_CASES: dict[str, tuple[BaseException, str]] = {
    "interrupt": (duckdb.InterruptException("INTERRUPT Error"), "time limit"),
    "out of memory": (duckdb.OutOfMemoryException(f"{VALUE} bytes"), "memory limit"),
    "engine internal": (duckdb.InternalException(VALUE), "internal error"),
    "policy": (PolicyError("SUM(x) is not allowed"), "query refused"),
    "integrity": (IntegrityError("bad tag"), "integrity error"),
    "fork": (ForkError("two histories"), "integrity error"),
    "ledger fold": (GovernanceError("replayed statement"), "integrity error"),
    "attestation": (AttestationError("no TSM"), "attestation failed"),
    "release": (JobFailedError("denied", category="key release denied"), "key release denied"),
    "network": (OperationalError("cannot reach the service"), "internal error"),
    "anything else": (KeyError(VALUE), "internal error"),
    # the message never decides: text that names another category changes nothing
    "misleading text": (ValueError("Conversion Error: time limit"), "internal error"),
    "misleading engine text": (duckdb.ConversionException("memory limit"), "conversion error"),
}


@pytest.mark.parametrize("case", sorted(EXCEPTION_CASES))
def test_exceptions_map_to_their_category_by_type(case: str) -> None:
    error, category = EXCEPTION_CASES[case]
    assert category_of(error) == category


def test_query_errors_carry_a_category_and_keep_the_text_inside(tmp_path: Path) -> None:
    failed = _query_error(LEAKY, tmp_path)
    assert failed.category == "conversion error"
    assert category_of(failed) == "conversion error"
    assert VALUE in str(failed)  # for a debugger inside the enclave, never on the wire
    assert _query_error("SELECT 1; SELECT 2", tmp_path).category == "query refused"
    assert _query_error("PRAGMA version", tmp_path).category == "query refused"
    rows = Limits(max_result_rows=10)
    assert _query_error("SELECT * FROM range(100)", tmp_path, rows).category == "result too large"
    size = Limits(max_result_bytes=100)
    assert _query_error("SELECT * FROM range(100)", tmp_path, size).category == "result too large"
    slow = Limits(time_s=0.2)
    query = "SELECT count(*) FROM range(100000000000) a"
    assert _query_error(query, tmp_path, slow).category == "time limit"


def test_every_data_category_is_reachable_from_the_enclave() -> None:
    reached = {category for _, category in ENGINE_CASES.values()} | {
        category for _, category in EXCEPTION_CASES.values()
    }
    reached |= {"result too large"}  # above, through run_sql
    reached |= {"key release timed out"}  # tests/test_owner_release.py, end to end
    runner_only = {"enclave crashed", "service restarted", "service busy"}
    assert reached | runner_only == set(FAILURE_CATEGORIES)


# -- the ledger refuses free text ----------------------------------------------------------


def _forge(party: Party, room: str, kind: str, body: dict[str, Any]) -> str:
    """A statement signed without the signer's own body check, as a hostile
    enclave or operator would make it."""
    payload = {
        "room": room,
        "kind": kind,
        "author": party.fingerprint,
        "nonce": "A" * 22,
        "created_at": 1_800_000_000_000,
        "body": body,
    }
    return jws.sign(
        canonical_json(payload), party.signing_private, kid=party.fingerprint, typ=STATEMENT_TYP
    )


FREE_TEXT = f"ConversionException: Type INT128 with value {VALUE} can't be cast"


@pytest.fixture
def jr(tmp_path: Path) -> JobRoom:
    return JobRoom(tmp_path)


def test_a_job_fail_with_free_text_is_refused(jr: JobRoom) -> None:
    job = jr.request()
    enclave, _ = jr.attempt(job)
    body = {"job": job, "reason": FREE_TEXT}
    with pytest.raises(DeserializationError, match="reason"):
        sign_statement(enclave, jr.room.room, "job.fail", body)
    forged = _forge(enclave, jr.room.room, "job.fail", body)
    with pytest.raises(DeserializationError, match="reason"):
        parse_statement(forged)
    with pytest.raises(DeserializationError):
        jr.room.submit(forged)
    with pytest.raises(DeserializationError):  # the service key may not either
        jr.room.submit(_forge(jr.ledger.service, jr.room.room, "job.fail", body))
    assert jr.state.jobs[job].status == "running"
    for near in ("Conversion error", "conversion error: 42", "conversion error "):
        with pytest.raises(DeserializationError):
            jr.room.submit(_forge(enclave, jr.room.room, "job.fail", {"job": job, "reason": near}))
    jr.room.submit(
        sign_statement(
            enclave, jr.room.room, "job.fail", {"job": job, "reason": "time limit"}, now=jr.clock
        )
    )
    assert jr.state.jobs[job].status == "failed"
    assert jr.state.jobs[job].reason == "time limit"


EXACT: dict[str, dict[str, Any]] = {
    "exact rows": {"output": {"rows": 2}},
    "exact bytes": {"output": {"bytes": 1171}},
    "exact duration": {"duration_ms": 37},
    "exact phase": {"phases": {"query_ms": 12}},
    "a phase named with data": {"phases": {f"v{VALUE}_ms": 100}},
}


@pytest.mark.parametrize("case", sorted(EXACT))
def test_a_job_complete_with_exact_sizes_or_timings_is_refused(jr: JobRoom, case: str) -> None:
    job = jr.request()
    enclave, _ = jr.attempt(job)
    change = EXACT[case]
    base = {
        "sha256": "0" * 64,
        "bytes": BYTES_BUCKET,
        "rows": ROWS_BUCKET,
        "columns": [{"name": "n", "type": "int64"}],
        "key_id": "k",
    }
    changes = dict(change)
    if "output" in change:
        changes["output"] = {**base, **change["output"]}
    with pytest.raises(DeserializationError):
        _complete(jr, job, enclave, **changes)
    assert jr.state.jobs[job].status == "running"
    _complete(jr, job, enclave, phases={"query_ms": 200, "run_ms": 100})
    assert jr.state.jobs[job].output["phases"] == {"query_ms": 200, "run_ms": 100}


# -- buckets -------------------------------------------------------------------------------


def test_buckets_round_up_to_a_fixed_grid() -> None:
    assert [time_bucket(ms) for ms in (0, 1, 100, 101, 250, 1000, 60_000)] == [
        100,
        100,
        100,
        200,
        400,
        1600,
        102_400,
    ]
    assert [rows_bucket(n) for n in (0, 1, 2, 16, 17, 1_000_000)] == [
        16,
        16,
        16,
        16,
        32,
        1 << 20,
    ]
    assert [bytes_bucket(n) for n in (1, 4096, 4097, 38_388)] == [4096, 4096, 8192, 65_536]
    with pytest.raises(ValueError, match="counts"):
        bucket(-1, 16)
    with pytest.raises(ValueError, match="positive"):
        bucket(1, 0)


@given(
    st.integers(min_value=0, max_value=1 << 50),
    st.integers(min_value=0, max_value=1 << 50),
    st.sampled_from([TIME_BUCKET_MS, ROWS_BUCKET, BYTES_BUCKET, 1, 3]),
)
def test_buckets_are_monotone_upper_bounds_on_a_fixed_grid(a: int, b: int, smallest: int) -> None:
    low, high = sorted((a, b))
    assert bucket(low, smallest) <= bucket(high, smallest)  # monotone
    assert bucket(a, smallest) >= a  # never below the true value: a size bound stays a bound
    assert bucket(a, smallest) < max(2 * a, 2 * smallest)  # and at most one step above
    assert is_bucket(bucket(a, smallest), smallest)  # on the fixed grid smallest * 2**k
    assert bucket(bucket(a, smallest), smallest) == bucket(a, smallest)
    assert is_bucket(a, smallest) == (bucket(a, smallest) == a and a >= smallest)


# -- what leaves the enclave process, and what the runner keeps ----------------------------


@pytest.mark.parametrize(
    ("raised", "printed"),
    [("query", "conversion error"), ("other", "internal error")],
)
def test_the_enclave_process_prints_only_the_category(
    raised: str, printed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    error: BaseException = (
        _query_error(LEAKY, tmp_path) if raised == "query" else RuntimeError(FREE_TEXT)
    )

    def failing(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(enclave_main, "run_job", failing)
    monkeypatch.setattr(sys, "stdin", io.StringIO("token\n"))
    code = enclave_main.main(["--service", "http://127.0.0.1:9", "--room", "r", "--job", "j"])
    out, err = capsys.readouterr()
    assert code == 1
    assert (out, err) == ("", f"job failed: {printed}\n")


HOSTILE = f"""
import json, sys
sys.stdout.write(json.dumps({{"duration_ms": 5, "phases": {{"v{VALUE}_ms": 1, "query_ms": 3}}}}))
sys.stderr.write("Traceback: ConversionException: value {VALUE}\\n")
sys.stderr.write({{LAST!r}} + "\\n")
sys.exit(1)
"""


class _HostileRunner(JobRunner):
    """The real runner, starting an "enclave" that writes data on both its outputs."""

    def __init__(self, jr: JobRoom, log_dir: Path, last: str) -> None:
        settings = RunnerSettings(url="http://127.0.0.1:9", log_dir=log_dir)
        super().__init__(jr.ledger, jr.desk, settings)
        self.script = HOSTILE.replace("{LAST!r}", repr(last))

    def _command(self, room: str, job: str) -> list[str]:
        return [sys.executable, "-c", self.script]


@pytest.mark.parametrize(
    ("last", "recorded"),
    [
        ("job failed: conversion error", "conversion error"),
        (f"job failed: conversion error {VALUE}", "enclave crashed"),
        (f"job failed: {FREE_TEXT}", "enclave crashed"),
        ("", "enclave crashed"),
    ],
)
def test_the_runner_records_a_category_and_logs_no_stderr(
    jr: JobRoom, tmp_path: Path, last: str, recorded: str
) -> None:
    job = jr.request()
    runner = _HostileRunner(jr, tmp_path / "logs", last)
    try:
        runner._run(jr.room.room, job)
    finally:
        runner.close()
    assert jr.state.jobs[job].status == "failed"
    assert jr.state.jobs[job].reason == recorded
    log = (tmp_path / "logs" / f"{job}.log").read_text()
    assert VALUE not in log
    timings, ended = log.splitlines()
    assert json.loads(timings) == {"duration_ms": 5, "phases": {"query_ms": 3}}
    assert ended == f"exit code 1, job failed: {recorded}"
    ledger = json.dumps(jr.ledger.export(jr.room.room))
    assert VALUE not in ledger


def test_the_runner_takes_only_a_known_category_from_stderr() -> None:
    assert reported_category("noise\njob failed: memory limit\n") == "memory limit"
    assert reported_category("job failed: memory limit\nnoise") is None
    assert reported_category("job failed: memory limits") is None
    assert reported_category("") is None
