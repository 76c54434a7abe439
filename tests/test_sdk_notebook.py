"""The SDK as a newcomer uses it in a notebook, against a real service.

Only typed methods and names: rooms, members, datasets and analyses by name,
proposals and jobs by the ids the SDK returned or a short prefix of them; no
fingerprint or 64-hex id is typed. Data goes in as a DuckDB relation and a
pandas frame, and the result comes back as a ``pyarrow.Table``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom import Party
from cleanroom.client import Client, Room
from cleanroom.errors import DeserializationError, NotFoundError
from cleanroom.service.local import local_service

TRANSACTIONS = {
    "identity_column": "customer",
    "columns": [
        {"name": "customer", "type": "string", "nullable": False},
        {"name": "amount", "type": "decimal(12,2)", "min": 0},
    ],
}
CUSTOMERS = {
    "identity_column": "customer",
    "columns": [
        {"name": "customer", "type": "string", "nullable": False},
        {"name": "segment", "type": "string"},
    ],
}
SQL = (
    "SELECT m.segment, COUNT(*) AS n, SUM(t.amount) AS total FROM transactions t "
    "JOIN customers m ON t.customer = m.customer GROUP BY m.segment ORDER BY m.segment"
)
ROLES = {
    "bank": ["data_provider", "result_recipient"],
    "merchant": ["data_provider"],
    "analyst": ["analyst"],
}
OPEN: list[Client] = []


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("sdk") / "data"
    with local_service(data, env={"CLEANROOM_JOB_RELEASE_WAIT_S": "60"}) as url:
        yield url
    while OPEN:
        OPEN.pop().close()


def _keystores(tmp: Path) -> dict[str, str]:
    """Each party's keystore directory, as `cleanroom party create` makes it: a str."""
    made = {}
    for name in ROLES:
        Party.create(name).save(tmp / "keys" / name)
        made[name] = str(tmp / "keys" / name)
    return made


def _client(url: str, keystore: str, **kwargs: object) -> Client:
    client = Client(url, keystore, **kwargs)  # type: ignore[arg-type]
    OPEN.append(client)
    return client


def _approve_all(rooms: dict[str, Room], proposal: str) -> None:
    """Every party whose approval is still needed approves, by a prefix of the id."""
    for room in rooms.values():
        view = next(p for p in room.proposals() if p["id"] == proposal)
        me = room.client.party.name
        if view["status"] == "open" and me in view["approvers"] and me not in view["approvals"]:
            room.approve(proposal[:8])
    assert next(p for p in room.proposals() if p["id"] == proposal)["status"] == "accepted"


def _offers_room(url: str, tmp: Path) -> dict[str, Room]:
    """The notebook: a room, its contract, two datasets, an analysis."""
    keys = _keystores(tmp)
    clients = {n: _client(url, k) for n, k in keys.items()}
    bank = clients["bank"]
    # members by Party, by identity document, by identity file (a str path)
    room = bank.create_room(
        f"offers-{tmp.name}",
        members=[
            (bank.party, ROLES["bank"]),
            (clients["merchant"].party.identity_document(), ROLES["merchant"]),
            (f"{keys['analyst']}/identity.json", ROLES["analyst"]),
        ],
    )
    rooms = {"bank": room}
    rooms["merchant"] = clients["merchant"].room(f"offers-{tmp.name}")  # by name
    rooms["analyst"] = clients["analyst"].room(room.id[:8])  # by a prefix of its id
    rooms["merchant"].accept()
    rooms["analyst"].accept()
    _approve_all(
        rooms,
        rooms["analyst"].propose_measurements(this_install=True, allow_insecure_virtual=True),
    )
    platforms = ["sev-snp", "tdx", "insecure-virtual"]
    con = duckdb.connect()
    transactions = con.sql(
        "SELECT 'c' || (i % 50) AS customer, CAST(i AS DECIMAL(12,2)) / 4 AS amount "
        "FROM range(500) r(i)"
    )
    _approve_all(
        rooms,
        rooms["bank"].publish_dataset(
            transactions,
            schema=TRANSACTIONS,
            name="transactions",
            release_to=platforms,
            release="broker",
        ),
    )
    customers = pd.DataFrame({"customer": [f"c{i}" for i in range(50)], "segment": ["a", "b"] * 25})
    _approve_all(
        rooms,
        rooms["merchant"].publish_dataset(
            customers,
            schema=CUSTOMERS,
            name="customers",
            release_to=platforms,
            release="broker",
            progress=False,
        ),
    )
    _approve_all(
        rooms,
        rooms["analyst"].propose_analysis(
            "offers", SQL, inputs=["transactions", "customers"], recipients=["bank"]
        ),
    )
    return rooms


def test_a_notebook_runs_a_job_by_names_and_reads_a_table(
    service: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rooms = _offers_room(service, tmp_path)
    capsys.readouterr()
    job = rooms["analyst"].run_job("offers")
    view = rooms["analyst"].wait_job(job[:6], timeout=120, progress=True)
    assert view["status"] == "succeeded", view["reason"]
    # wait_job reported the job's states as they changed
    shown = capsys.readouterr().err
    assert f"job {job[:12]}... (offers): succeeded" in shown
    assert rooms["analyst"].job(job[:6])["status"] == "succeeded"

    # the result, in memory: a pyarrow Table, exact decimals unless asked
    result = rooms["bank"].job_result(job[:6])
    assert isinstance(result, pa.Table)
    assert capsys.readouterr().err == ""  # not a terminal: no progress unless asked
    assert result.column_names == ["segment", "n", "total"]
    assert pa.types.is_decimal(result.schema.field("total").type)
    metadata = result.schema.metadata
    assert metadata[b"cleanroom.assurance"] == b"insecure-virtual"
    assert metadata[b"cleanroom.job"] == job.encode()
    assert metadata[b"cleanroom.analysis"] == b"offers"
    expected = {
        s: sum(Decimal(i) / 4 for i in range(500) if (i % 50) % 2 == (s == "b")) for s in ("a", "b")
    }
    frame = result.to_pandas()
    assert isinstance(frame["total"][0], Decimal)
    assert dict(zip(frame["segment"], frame["total"], strict=True)) == expected

    floats = rooms["bank"].job_result(job, decimals="float").to_pandas()
    assert str(floats["total"].dtype) == "float64"
    assert dict(zip(floats["segment"], floats["total"], strict=True)) == {
        s: float(v) for s, v in expected.items()
    }
    assert list(floats["n"]) == [250, 250]

    # and to a file, as before; a str path is fine
    out = tmp_path / "offers.parquet"
    written = rooms["bank"].download_result(job[:6], str(out), progress=False)
    assert written["rows"] == 2
    assert pq.read_table(out).equals(result)
    with pytest.raises(ValueError, match="'exact' or 'float'"):
        rooms["bank"].job_result(job, decimals="round")  # type: ignore[arg-type]


def test_names_unknown_pending_or_ambiguous_are_refused_with_candidates(
    service: str, tmp_path: Path
) -> None:
    rooms = _offers_room(service, tmp_path)
    analyst = rooms["analyst"]
    with pytest.raises(NotFoundError, match=r"no analysis 'nope' \(known: offers\)"):
        analyst.run_job("nope")
    # a second analysis whose name starts like the first: names match exactly, never by prefix
    pending = analyst.propose_analysis(
        "offers_total",
        "SELECT SUM(amount) AS total FROM transactions",
        inputs=["transactions"],
        recipients=["bank"],
    )
    with pytest.raises(NotFoundError, match=r"offers_total.* yet: proposal .* awaits approval"):
        analyst.run_job("offers_total")
    _approve_all(rooms, pending)
    with pytest.raises(NotFoundError, match=r"^no analysis 'offe' \(known: offers, offers_total\)"):
        analyst.run_job("offe")
    with pytest.raises(NotFoundError, match="no member 'stranger'"):
        rooms["bank"].remove_member("stranger")
    with pytest.raises(NotFoundError, match="no dataset 'cards'"):
        analyst.propose_analysis("x", "SELECT 1", inputs=["cards"], recipients=["bank"])
    with pytest.raises(NotFoundError, match="no proposal 'ffffffff'"):
        rooms["bank"].approve("ffffffff")
    with pytest.raises(NotFoundError, match="at least 4 characters"):
        rooms["bank"].approve("ab")
    with pytest.raises(NotFoundError, match="no job 'ffffffff'"):
        analyst.wait_job("ffffffff")
    with pytest.raises(NotFoundError, match="no room 'elsewhere'"):
        rooms["bank"].client.room("elsewhere")
    # a mistyped argument is refused before anything is signed, naming the field
    with pytest.raises(DeserializationError, match="epsilon"):
        rooms["bank"].set_privacy_budget("transactions", epsilon=-1)


def test_every_typed_proposal_is_one_the_room_accepts(service: str, tmp_path: Path) -> None:
    rooms = _offers_room(service, tmp_path)
    bank, merchant, analyst = rooms["bank"], rooms["merchant"], rooms["analyst"]
    auditor = Party.create("auditor")
    proposed = {
        "add_member": bank.add_member(auditor, roles=["observer"]),
        "set_privacy_budget": bank.set_privacy_budget("transactions", epsilon=3.0),
        "set_limits": bank.set_limits(time_s=600, memory_mb=1024, max_result_rows=10_000),
        "change_constitution": bank.change_constitution("majority"),
        "set_analysis_rule": merchant.set_analysis_rule(
            "customers",
            {
                "type": "list",
                "list_columns": ["segment"],
                "join_columns": ["customer"],
                "recipients": ["bank"],
            },
        ),
        "retire_analysis": analyst.retire_analysis("offers"),
        "remove_member": bank.remove_member("analyst"),
    }
    merchant.revoke_consent("customers")
    proposed["restore_consent"] = merchant.restore_consent("customers")
    listed = {p["id"]: p for p in bank.proposals()}
    for kind, pid in proposed.items():
        assert listed[pid]["type"] == kind
        assert listed[pid]["status"] == "open", listed[pid]["note"]
    rule = listed[proposed["set_analysis_rule"]]["action"]["rule"]
    assert rule["recipients"] == [bank.client.party.fingerprint]  # the name, resolved
    assert listed[proposed["remove_member"]]["action"]["member"] == (
        analyst.client.party.fingerprint
    )
    _approve_all(rooms, proposed["set_limits"])
    limits = bank.state()["limits"]
    assert (limits["time_s"], limits["memory_mb"], limits["max_result_rows"]) == (600, 1024, 10_000)
    analyst.withdraw(proposed["retire_analysis"][:8])
    assert {p["id"]: p for p in bank.proposals()}[proposed["retire_analysis"]]["status"] == (
        "withdrawn"
    )
