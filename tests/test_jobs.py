"""Attested jobs end to end: a real service, the key broker, real enclave processes."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom import Client, Party
from cleanroom.agent import KeyAgent
from cleanroom.attestation import measure
from cleanroom.client import Room
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.datasets.schema import Schema
from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    GovernanceError,
    IntegrityError,
    NotFoundError,
)
from cleanroom.governance.outcomes import (
    BYTES_BUCKET,
    ROWS_BUCKET,
    TIME_BUCKET_MS,
    is_bucket,
)
from cleanroom.service.local import local_service
from tests.service_fixture import postgres_schema

SCHEMA_BANK = Schema.from_json(
    {
        "identity_column": "customer",
        "columns": [
            {"name": "customer", "type": "string", "nullable": False},
            {"name": "amount", "type": "int64", "min": 0},
        ],
    }
)
SCHEMA_MERCHANT = Schema.from_json(
    {
        "identity_column": "customer",
        "columns": [
            {"name": "customer", "type": "string", "nullable": False},
            {"name": "segment", "type": "string"},
        ],
    }
)
SQL = (
    "SELECT m.segment, COUNT(*) AS n, SUM(t.amount) AS total FROM transactions t "
    "JOIN customers m ON t.customer = m.customer GROUP BY m.segment ORDER BY m.segment"
)
VIRTUAL = ["sev-snp", "tdx", "insecure-virtual"]

OPEN: list[Client] = []
AGENTS: list[tuple[threading.Thread, threading.Event]] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while AGENTS:
        thread, stop = AGENTS.pop()
        stop.set()
        thread.join(timeout=10)
    while OPEN:
        OPEN.pop().close()


def start_agent(url: str, party: Party, room_id: str, tmp: Path) -> threading.Event:
    """The owner's key agent, with its own connection, as `cleanroom keys serve` runs it."""
    client = _client(url, party, tmp / "agent")
    agent = KeyAgent(client.room(room_id), KeyVault(party, tmp / party.name / VAULT_DIR))
    stop = threading.Event()
    thread = threading.Thread(target=agent.serve, kwargs={"poll_s": 0.1, "stop": stop})
    thread.start()
    AGENTS.append((thread, stop))
    return stop


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("jobs") / "data"
    with local_service(data) as url:
        yield url, data


@pytest.fixture
def service(service_dir: tuple[str, Path]) -> str:
    return service_dir[0]


def _client(url: str, party: Party, tmp: Path) -> Client:
    opened = Client(url, party, state_dir=tmp / party.name)
    OPEN.append(opened)
    return opened


def _room(
    url: str,
    tmp: Path,
    *,
    measurement: str | None = None,
    release_to: list[str] | None = None,
    sql: str = SQL,
    rules: dict[str, dict[str, Any]] | None = None,
    budget: float | None = None,
    dp: dict[str, Any] | None = None,
    release: str = "owner",
    agents: bool = True,
) -> dict[str, Room]:
    """A room of a bank, a merchant and an analyst with an approved analysis; in
    owner-held release (the default) each owner's key agent runs unless
    ``agents`` is false."""
    parties = {n: Party.create(n) for n in ("bank", "merchant", "analyst")}
    roles = {
        "bank": ["data_provider", "result_recipient"],
        "merchant": ["data_provider"],
        "analyst": ["analyst"],
    }
    clients = {n: _client(url, p, tmp) for n, p in parties.items()}
    created = clients["bank"].create_room(
        "offers", [(parties[n].identity_document(), roles[n]) for n in parties]
    )
    rooms = {n: clients[n].room(created.id) for n in parties}
    rooms["merchant"].accept()
    rooms["analyst"].accept()
    # the contract first: a broker deposit needs the attested broker approved
    measurements = rooms["analyst"].propose(
        {
            "type": "set_measurements",
            "measurements": [{"platform": "insecure-virtual", "value": measurement or measure()}],
            "allow_insecure_virtual": True,
        }
    )
    for approver in rooms.values():
        _approve_if_needed(approver, measurements)
    bank, merchant = _tables()
    platforms = release_to or VIRTUAL
    for owner, data, schema, name in (
        ("bank", bank, SCHEMA_BANK, "transactions"),
        ("merchant", merchant, SCHEMA_MERCHANT, "customers"),
    ):
        proposal = rooms[owner].publish_dataset(
            data,
            schema=schema,
            name=name,
            release_to=platforms,
            rule=(rules or {}).get(name),
            release=release,  # type: ignore[arg-type]
        )
        for approver in rooms.values():
            _approve_if_needed(approver, proposal)
    if budget is not None:
        for owner, name in (("bank", "transactions"), ("merchant", "customers")):
            pid = rooms[owner].propose(
                {"type": "set_privacy_budget", "dataset": name, "epsilon": budget}
            )
            for approver in rooms.values():
                _approve_if_needed(approver, pid)
    analysis = rooms["analyst"].propose(
        {
            "type": "add_analysis",
            "name": "offers",
            "language": "sql",
            "text": sql,
            "inputs": ["transactions", "customers"],
            "recipients": [parties["bank"].fingerprint],
            **({"dp": dp} if dp is not None else {}),
        }
    )
    for approver in rooms.values():
        _approve_if_needed(approver, analysis)
    if release == "owner" and agents:
        for owner in ("bank", "merchant"):
            start_agent(url, parties[owner], created.id, tmp)
    return rooms


def _tables() -> tuple[pa.Table, pa.Table]:
    bank = pa.table({"customer": [f"c{i % 50}" for i in range(500)], "amount": list(range(500))})
    merchant = pa.table({"customer": [f"c{i}" for i in range(50)], "segment": ["a", "b"] * 25})
    return bank, merchant


def _approve_if_needed(room: Room, proposal: str) -> None:
    view = next(p for p in room.proposals() if p["id"] == proposal)
    me = room.client.party.name
    if view["status"] == "open" and me in view["approvers"] and me not in view["approvals"]:
        room.approve(proposal)


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, service: str, tmp_path: Path) -> Iterator[str]:
    """The module's SQLite service, then a service keeping its ledger in PostgreSQL."""
    if request.param == "sqlite":
        yield service
        return
    with (
        postgres_schema() as (database_url, schema),
        local_service(
            tmp_path / "pg-data",
            database_url=database_url,
            env={"CLEANROOM_DATABASE_SCHEMA": schema},
        ) as url,
    ):
        yield url


def test_offers_job_runs_and_only_the_recipient_reads_it(any_store: str, tmp_path: Path) -> None:
    rooms = _room(any_store, tmp_path)
    assert rooms["bank"].state()["analyses"][0]["status"] == "active"
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    assert view["assurance"] == "insecure-virtual"
    assert view["measurement"] == measure()
    out = tmp_path / "result.parquet"
    verified = rooms["bank"].download_result(job, out)
    assert verified["assurance"] == "insecure-virtual"
    assert verified["rows"] == 2  # exact, for the recipient who decrypted it
    metadata = pq.read_schema(out).metadata
    assert metadata[b"cleanroom.assurance"] == b"insecure-virtual"
    assert metadata[b"cleanroom.job"] == job.encode()
    result = pq.read_table(out).to_pylist()
    assert result == [
        {"segment": "a", "n": 250, "total": sum(a for a in range(500) if (a % 50) % 2 == 0)},
        {"segment": "b", "n": 250, "total": sum(a for a in range(500) if (a % 50) % 2 == 1)},
    ]
    with pytest.raises(AuthorizationError, match="not its recipient"):
        rooms["merchant"].download_result(job, tmp_path / "stolen.parquet")
    assert not (tmp_path / "stolen.parquet").exists()
    entries = rooms["bank"].audit.verify().statements
    kinds = [s.kind for s in entries]
    # owner-held release: each data owner's agent signed the release of its own input
    releases = [s for s in entries if s.kind == "key.release"]
    owners = {rooms[n].client.party.fingerprint: n for n in ("bank", "merchant")}
    assert sorted(owners[s.author] for s in releases) == ["bank", "merchant"]
    assert [[i.dataset for i in s.body.inputs] for s in releases] in (
        [["transactions"], ["customers"]],
        [["customers"], ["transactions"]],
    )
    assert kinds.count("job.complete") == 1
    # the public ledger shows buckets: 2 rows, a ~1 KiB file and every timing rounded up
    output = view["output"]
    assert output["rows"] == ROWS_BUCKET
    assert is_bucket(output["bytes"], BYTES_BUCKET)  # the service checked the blob falls in it
    assert is_bucket(output["duration_ms"], TIME_BUCKET_MS)
    assert {"query_ms", "prepare_ms", "run_ms", "seal_ms"} <= set(output["phases"])
    assert all(is_bucket(ms, TIME_BUCKET_MS) for ms in output["phases"].values())


def _blob(data_dir: Path, digest: str) -> Path:
    return data_dir / "blobs" / digest


def test_an_operator_swapping_input_ciphertext_fails_the_job(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    url, data = service_dir
    rooms = _room(url, tmp_path)
    digest = next(d for d in rooms["bank"].state()["datasets"] if d["name"] == "customers")[
        "versions"
    ][-1]["sha256"]
    blob = _blob(data, digest)
    original = blob.read_bytes()
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        job = rooms["analyst"].run_job("offers")
        view = rooms["analyst"].wait_job(job, timeout=120)
    finally:
        blob.write_bytes(original)
    assert view["status"] == "failed"
    assert view["reason"] == "integrity error"
    statements = rooms["bank"].audit.verify().statements
    assert statements[-1].kind == "job.fail"  # reported by the enclave itself
    assert statements[-1].author == view["enclave"]


def test_an_operator_tampering_with_the_result_is_caught_by_the_recipient(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    url, data = service_dir
    rooms = _room(url, tmp_path)
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    blob = data / "results" / view["output"]["sha256"]
    blob.write_bytes(blob.read_bytes()[:-3])
    out = tmp_path / "result.csv"
    with pytest.raises(IntegrityError, match="does not match its digest"):
        rooms["bank"].download_result(job, out)
    assert not out.exists()


# an approved query (both owners have custom rules and approve its exact text)
# that fails in DuckDB with an error quoting one customer's total
LEAKY_SQL = (
    "SELECT CAST(SUM(t.amount) * 1000003 AS TINYINT) AS total FROM transactions t "
    "JOIN customers m ON t.customer = m.customer WHERE t.customer = 'c7'"
)
CUSTOM = {"transactions": {"type": "custom"}, "customers": {"type": "custom"}}


def _job_log(data: Path, job: str) -> str:
    """The operator's log of a job, written once the enclave process has exited."""
    log = data / "jobs" / f"{job}.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().endswith("\n")):
        assert time.monotonic() < deadline, "the job runner wrote no log"
        time.sleep(0.1)
    return log.read_text()


def test_a_query_error_quoting_data_publishes_only_its_category(
    service_dir: tuple[str, Path], tmp_path: Path
) -> None:
    """The analyst's approved query makes DuckDB fail with the value of a
    one-person group in its message: neither the ledger, nor the operator's logs,
    nor the enclave's standard error (which the runner reads) may carry it."""
    url, data = service_dir
    bank, merchant = _tables()
    secret = str(sum(range(7, 500, 50)) * 1000003)  # customer c7's amounts, times the factor
    plain = duckdb.connect()
    plain.register("transactions", bank)
    plain.register("customers", merchant)
    with pytest.raises(duckdb.ConversionException, match=secret):  # the attack is real
        plain.execute(LEAKY_SQL).fetchall()
    rooms = _room(url, tmp_path, sql=LEAKY_SQL, rules=CUSTOM)
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "failed"
    assert view["reason"] == "conversion error"
    statements = rooms["bank"].audit.verify().statements
    failure = statements[-1]
    assert failure.kind == "job.fail"
    assert failure.author == view["enclave"]  # reported by the enclave itself
    assert failure.body.reason == "conversion error"
    for statement in statements:
        assert secret not in statement.parsed.payload.decode()
    export = rooms["bank"].client._call("GET", f"/v1/rooms/{rooms['bank'].id}/export")
    assert secret not in json.dumps(export)
    # the operator's job log: the timings line (none: it failed), exit code, category
    log = _job_log(data, job)
    assert log == "exit code 1, job failed: conversion error\n"
    for path in (data / "jobs").iterdir():
        assert secret not in path.read_text()
    assert secret not in data.with_name(f"{data.name}.log").read_text()  # the service's log
    with pytest.raises(NotFoundError, match="no result"):
        rooms["bank"].download_result(job, tmp_path / "none.csv")


def test_changed_enclave_code_gets_no_keys_until_the_room_approves_it(tmp_path: Path) -> None:
    """The runtime's measurement is a hash of its code: a service whose enclave
    runs modified code is refused keys (recorded on the ledger), until the room
    approves the new measurement."""
    import cleanroom  # noqa: PLC0415

    site = tmp_path / "modified"
    copy = site / "cleanroom"
    shutil.copytree(
        Path(cleanroom.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    runtime = copy / "enclave" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n# a change nobody approved\n")
    modified = measure(copy)
    assert modified != measure()
    with local_service(tmp_path / "data", env={"PYTHONPATH": str(site)}) as url:
        rooms = _room(url, tmp_path)  # the room approves the original code only
        job = rooms["analyst"].run_job("offers")
        view = rooms["analyst"].wait_job(job, timeout=120)
        assert view["status"] == "failed"
        assert "not approved" in view["reason"]
        assert rooms["bank"].audit.verify().statements[-1].kind == "key.deny"
        update = rooms["analyst"].propose(
            {
                "type": "set_measurements",
                "measurements": [{"platform": "insecure-virtual", "value": modified}],
                "allow_insecure_virtual": True,
            }
        )
        for approver in rooms.values():
            _approve_if_needed(approver, update)
        job = rooms["analyst"].run_job("offers")
        view = rooms["analyst"].wait_job(job, timeout=120)
        assert view["status"] == "succeeded", view["reason"]
        assert view["measurement"] == modified


def test_only_members_see_jobs_and_only_recipients_fetch_results(
    service: str, tmp_path: Path
) -> None:
    rooms = _room(service, tmp_path)
    job = rooms["analyst"].run_job("offers")
    assert rooms["analyst"].wait_job(job, timeout=120)["status"] == "succeeded"
    stranger = _client(service, Party.create("stranger"), tmp_path).room(rooms["bank"].id)
    with pytest.raises(AuthenticationError, match="unknown key"):
        stranger.jobs()
    with pytest.raises(AuthorizationError, match="recipients"):
        rooms["merchant"].download(
            "0" * 64, tmp_path / "x", route=f"/v1/rooms/{rooms['bank'].id}/jobs/{job}/result"
        )
    with pytest.raises(GovernanceError, match="only analysts and result recipients"):
        rooms["merchant"].run_job("offers")


BANK_RULE = {
    "type": "aggregation",
    "aggregates": [
        {"function": "sum", "columns": ["amount"]},
        {"function": "count_distinct", "columns": ["customer"]},
    ],
    "join_columns": ["customer"],
    "min_distinct": 30,
}
MERCHANT_RULE = {
    "type": "aggregation",
    "aggregates": [{"function": "count_distinct", "columns": ["customer"]}],
    "dimensions": ["segment"],
    "join_columns": ["customer"],
    "min_distinct": 5,
}


def test_thresholds_are_enforced_inside_the_enclave(service: str, tmp_path: Path) -> None:
    """The bank's rule wants 30 distinct customers behind every row; each segment
    has 25: the enclave suppresses both rows, whatever the analyst hoped."""
    rules = {"transactions": BANK_RULE, "customers": MERCHANT_RULE}
    rooms = _room(service, tmp_path, rules=rules)
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    assert rooms["bank"].download_result(job, tmp_path / "none.parquet")["rows"] == 0
    assert view["output"]["rows"] == ROWS_BUCKET  # the ledger shows a bucket: 0 to 16 rows
    with pytest.raises(GovernanceError, match="identity column"):
        rooms["analyst"].propose(
            {
                "type": "add_analysis",
                "name": "leak",
                "language": "sql",
                "text": "SELECT customer, SUM(amount) FROM transactions GROUP BY customer",
                "inputs": ["transactions"],
                "recipients": [rooms["bank"].client.party.fingerprint],
            }
        )


DP = {
    "epsilon": 1.0,
    "unit": "person",
    "max_contributions": 10,
    "group_by": {"segment": ["a", "b", "z"]},
    "aggregates": [
        {"name": "n", "function": "count"},
        {"name": "spend", "function": "mean", "column": "amount", "lower": 0, "upper": 500},
    ],
}
DP_SQL = (
    "SELECT t.customer AS person, m.segment AS segment, t.amount AS amount "
    "FROM transactions t JOIN customers m ON t.customer = m.customer"
)


def test_a_dp_job_releases_noisy_aggregates_and_charges_the_budget(
    service: str, tmp_path: Path
) -> None:
    rules = {"transactions": BANK_RULE, "customers": MERCHANT_RULE}
    rooms = _room(service, tmp_path, rules=rules, budget=1.5, sql=DP_SQL, dp=DP)
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    out = tmp_path / "dp.parquet"
    rooms["bank"].download_result(job, out)
    rows = {r["segment"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == {"a", "b", "z"}  # every declared key, the empty one included
    assert 0 <= rows["a"]["spend"] <= 500
    budgets = rooms["bank"].budgets()
    assert budgets["transactions"]["spent"] == 1.0
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "failed"
    assert "exhausted" in view["reason"]
