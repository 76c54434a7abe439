"""Attested jobs end to end: a real service, the key broker, real enclave processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom import Client, Party
from cleanroom.attestation import measure
from cleanroom.client import Room
from cleanroom.datasets.schema import Schema
from cleanroom.errors import AuthorizationError
from tests.service_fixture import running_service

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


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_service(tmp_path_factory.mktemp("jobs") / "data") as url:
        yield url


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
) -> dict[str, Room]:
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
    bank = pa.table({"customer": [f"c{i % 50}" for i in range(500)], "amount": list(range(500))})
    merchant = pa.table({"customer": [f"c{i}" for i in range(50)], "segment": ["a", "b"] * 25})
    platforms = release_to or VIRTUAL
    for owner, data, schema, name in (
        ("bank", bank, SCHEMA_BANK, "transactions"),
        ("merchant", merchant, SCHEMA_MERCHANT, "customers"),
    ):
        proposal = rooms[owner].publish_dataset(
            data, schema=schema, name=name, release_to=platforms
        )
        for approver in rooms.values():
            _approve_if_needed(approver, proposal)
    measurements = rooms["analyst"].propose(
        {
            "type": "set_measurements",
            "measurements": [{"platform": "insecure-virtual", "value": measurement or measure()}],
            "allow_insecure_virtual": True,
        }
    )
    for approver in rooms.values():
        _approve_if_needed(approver, measurements)
    analysis = rooms["analyst"].propose(
        {
            "type": "add_analysis",
            "name": "offers",
            "language": "sql",
            "text": SQL,
            "inputs": ["transactions", "customers"],
            "recipients": [parties["bank"].fingerprint],
        }
    )
    for approver in rooms.values():
        _approve_if_needed(approver, analysis)
    return rooms


def _approve_if_needed(room: Room, proposal: str) -> None:
    view = next(p for p in room.proposals() if p["id"] == proposal)
    me = room.client.party.name
    if view["status"] == "open" and me in view["approvers"] and me not in view["approvals"]:
        room.approve(proposal)


def test_offers_job_runs_and_only_the_recipient_reads_it(service: str, tmp_path: Path) -> None:
    rooms = _room(service, tmp_path)
    assert rooms["bank"].state()["analyses"][0]["status"] == "active"
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job, timeout=120)
    assert view["status"] == "succeeded", view["reason"]
    assert view["assurance"] == "insecure-virtual"
    assert view["measurement"] == measure()
    out = tmp_path / "result.parquet"
    verified = rooms["bank"].job_result(job, out)
    assert verified["assurance"] == "insecure-virtual"
    result = pq.read_table(out).to_pylist()
    assert result == [
        {"segment": "a", "n": 250, "total": sum(a for a in range(500) if (a % 50) % 2 == 0)},
        {"segment": "b", "n": 250, "total": sum(a for a in range(500) if (a % 50) % 2 == 1)},
    ]
    with pytest.raises(AuthorizationError, match="not its recipient"):
        rooms["merchant"].job_result(job, tmp_path / "stolen.parquet")
    assert not (tmp_path / "stolen.parquet").exists()
    entries = rooms["bank"].audit.verify().statements
    kinds = [s.kind for s in entries]
    assert kinds.count("key.release") == 1
    assert kinds.count("job.complete") == 1
