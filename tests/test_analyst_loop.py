"""The analyst's development loop: `dataset schema`, `dataset mock` and
`analysis check`, against a real service and a room whose ledger the command
verifies, plus the mock generator's own properties (deterministic, valid
against the schema, joinable, never the data).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cleanroom import Party
from cleanroom.cli.main import run
from cleanroom.cli.ui import console
from cleanroom.client import STATE_DIR, Client
from cleanroom.datasets.mock import MockSpec, mock_table
from cleanroom.datasets.schema import Schema
from cleanroom.datasets.validate import BatchValidator
from cleanroom.policy.check import Source, check_query
from cleanroom.policy.rules import AggregationRule
from cleanroom.service.local import local_service

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
NAMES = ("transactions", "customers")


def _schema(name: str) -> Schema:
    return Schema.load(EXAMPLE / f"{name}.schema.json")


def _rule(name: str) -> dict[str, Any]:
    rule: dict[str, Any] = json.loads((EXAMPLE / f"{name}.rule.json").read_text())
    return rule


def _real_ids() -> set[str]:
    lines = (EXAMPLE / "customers.csv").read_text().splitlines()
    return {row["customer_id"] for row in csv.DictReader(lines)}


# -- the mock generator, alone ----------------------------------------------------------


def _mock(name: str, seed: int = 0, rows: int = 500) -> Any:
    rule = AggregationRule.model_validate(_rule(name))
    spec = MockSpec.of(
        rows=rows, persons=100, seed=seed, linked=rule.join_columns, grouped=rule.dimensions
    )
    return mock_table(_schema(name), name, spec)


def test_a_mock_is_the_same_for_the_same_seed_and_valid_against_its_schema() -> None:
    for name in NAMES:
        first, again, other = _mock(name), _mock(name), _mock(name, seed=1)
        assert first.equals(again)
        assert not first.equals(other)
        assert first.schema == _schema(name).arrow_schema()
        validator = BatchValidator(_schema(name))
        for batch in first.to_batches():
            validator.validate(batch)  # raises on any value outside the declared domain


def test_mocks_join_and_respect_declared_domains() -> None:
    transactions, customers = _mock("transactions"), _mock("customers", rows=100)
    ids = set(customers.column("customer_id").to_pylist())
    assert len(ids) == 100  # no more rows than people: one row per person
    assert set(transactions.column("customer_id").to_pylist()) <= ids  # they join
    assert set(customers.column("region").to_pylist()) <= {
        "north",
        "south",
        "east",
        "west",
        "islands",
    }
    days = transactions.column("day").to_pylist()
    assert min(days) >= date(2026, 1, 1)
    assert max(days) <= date(2026, 3, 31)
    amounts = transactions.column("amount").to_pylist()
    assert all(Decimal(0) <= a <= Decimal(5000) for a in amounts)
    assert all(a == a.quantize(Decimal("0.01")) for a in amounts)


def test_mock_values_are_made_up_not_the_data() -> None:
    assert _real_ids().isdisjoint(_mock("customers").column("customer_id").to_pylist())


@pytest.mark.parametrize(
    "column",
    [
        {"name": "v", "type": "int32", "min": -5, "max": -1},
        {"name": "v", "type": "int64", "max": 3},
        {"name": "v", "type": "float64", "min": 0.5, "max": 0.75},
        {"name": "v", "type": "decimal(4,3)", "min": "-1.5"},
        {"name": "v", "type": "date", "max": "2001-02-03"},
        {"name": "v", "type": "timestamp", "min": "2030-01-01T00:00:00"},
        {"name": "v", "type": "timestamp_tz"},
        {"name": "v", "type": "boolean", "nullable": False},
        {"name": "v", "type": "string", "allowed": ["only"]},
        {"name": "v", "type": "int64", "allowed": [7, 9]},
    ],
    ids=lambda c: f"{c['type']}-{'-'.join(k for k in c if k not in ('name', 'type'))}",
)
def test_every_column_type_and_bound_gives_valid_values(column: dict[str, Any]) -> None:
    schema = Schema.from_json(
        {
            "identity_column": "who",
            "columns": [{"name": "who", "type": "string", "nullable": False}, column],
        }
    )
    for grouped in ((), ("v",)):
        table = mock_table(schema, "t", MockSpec.of(rows=300, grouped=grouped))
        for batch in table.to_batches():
            BatchValidator(schema).validate(batch)
        assert table.column("who").null_count == 0


def test_a_mock_spec_refuses_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="rows"):
        MockSpec.of(rows=0)
    with pytest.raises(ValueError, match="person"):
        MockSpec.of(persons=0)


# -- against a real service ----------------------------------------------------------------


class Loop:
    def __init__(self, url: str, work: Path) -> None:
        self.url = url
        self.work = work

    def cli(
        self, capsys: pytest.CaptureFixture[str], *args: str, ok: bool = True
    ) -> tuple[int, str, str]:
        code = run([*args, "--room", "quickstart", "--service", self.url, "--as", self.keys])
        out, err = capsys.readouterr()
        assert (code == 0) == ok, f"exit {code}\n{out}\n{err}"
        return code, out, err

    @property
    def keys(self) -> str:
        return str(self.work / "keys" / "analyst")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    work = tmp_path_factory.mktemp("analyst-loop")
    parties = {}
    for name in ("bank", "merchant", "analyst"):
        parties[name] = Party.create(name)
        parties[name].save(work / "keys" / name)
    with local_service(work / "service-data") as url:

        def client(name: str) -> Client:
            return Client(url, work / "keys" / name, state_dir=work / "keys" / name / STATE_DIR)

        with client("bank") as bank, client("merchant") as merchant, client("analyst") as analyst:
            room = bank.create_room(
                "quickstart",
                [
                    (parties["bank"], ["data_provider"]),
                    (parties["merchant"], ["data_provider"]),
                    (parties["analyst"], ["analyst", "result_recipient"]),
                ],
            )
            for member in (merchant, analyst):
                member.room(room.id).accept()
            for owner, name in ((bank, "transactions"), (merchant, "customers")):
                handle = owner.room(room.id)
                pid = handle.publish_dataset(
                    EXAMPLE / f"{name}.csv",
                    schema=EXAMPLE / f"{name}.schema.json",
                    name=name,
                    rule=_rule(name),
                )
                handle.approve(pid)
                analyst.room(room.id).approve(pid)
        wide, console.width = console.width, 200  # tables unwrapped, to read them here
        try:
            yield Loop(url, work)
        finally:
            console.width = wide


def test_schema_shows_columns_types_and_the_rule_in_words(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = loop.cli(capsys, "dataset", "schema", "transactions")
    for text in ("customer_id", "decimal(10,2)", "one of grocery", "2026-01-01 to", "owner bank"):
        assert text in out
    assert "aggregation only: COUNT(DISTINCT) over customer_id" in out
    assert "SUM/AVG over amount" in out
    assert "at least 5 distinct customer_id per output row" in out
    _, out, _ = loop.cli(capsys, "dataset", "schema", "customers", "--json")
    shown = json.loads(out)
    assert shown["schema"] == _schema("customers").to_json()  # as the owner declared it
    assert shown["rule"]["min_distinct"] == 5
    assert shown["owner"] == "merchant"
    assert shown["rows"] == 60


def test_mock_download_is_deterministic_and_not_the_data(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    first, again = loop.work / "a.csv", loop.work / "b.csv"
    loop.cli(capsys, "dataset", "mock", "customers", "-o", str(first))
    loop.cli(capsys, "dataset", "mock", "customers", "-o", str(again))
    assert first.read_bytes() == again.read_bytes()
    rows = list(csv.DictReader(first.read_text().splitlines()))
    assert list(rows[0]) == _schema("customers").names
    assert len(rows) == 1000
    assert _real_ids().isdisjoint(r["customer_id"] for r in rows)
    parquet = loop.work / "t.parquet"
    loop.cli(capsys, "dataset", "mock", "transactions", "-o", str(parquet), "--rows", "50")
    assert pq.read_table(parquet).schema == _schema("transactions").arrow_schema()
    _, _, err = loop.cli(capsys, "dataset", "mock", "nosuch", "-o", str(first), ok=False)
    assert "no dataset 'nosuch'" in err


def test_check_runs_the_rooms_check_then_the_checked_sql_on_mocks(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = EXAMPLE / "spend.sql"
    _, out, _ = loop.cli(capsys, "analysis", "check", "--sql", str(sql), "--json")
    checked = json.loads(out)
    assert checked["inputs"] == ["customers", "transactions"]  # found in the SQL
    assert checked["recipients"] == ["analyst"]
    # the same rewrite as the policy check over the owners' own files
    sources = {
        n: Source(n, _schema(n), AggregationRule.model_validate(_rule(n)), owner_approved=True)
        for n in NAMES
    }
    assert checked["sql"] == check_query(sql.read_text(), sources).sql
    assert checked["columns"] == ["region", "category", "customers", "spend"]
    assert all(row[2] >= 5 for row in checked["rows"])
    assert checked["suppressed"], "the skewed mocks leave a small group to suppress"
    assert all(row[2] < 5 for row in checked["suppressed"])
    _, text, _ = loop.cli(capsys, "analysis", "check", "--sql", str(sql), "--show-sql")
    assert "policy check passed" in text
    assert "suppressed" in text
    assert "__cleanroom_" in text  # the SQL the enclave would run


def test_check_refuses_what_the_room_would_refuse(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    leak = loop.work / "leak.sql"
    leak.write_text("SELECT customer_id, SUM(amount) AS spend FROM transactions GROUP BY 1\n")
    code, out, err = loop.cli(capsys, "analysis", "check", "--sql", str(leak), ok=False)
    assert code == 1
    assert "identity column" in err
    assert "policy check passed" not in out
    none = loop.work / "none.sql"
    none.write_text("SELECT 1 AS x\n")
    _, _, err = loop.cli(capsys, "analysis", "check", "--sql", str(none), ok=False)
    assert "reads none of the room's datasets" in err


def test_check_refuses_an_input_whose_owner_revoked_consent(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    """Last in this module: it revokes the merchant's consent."""
    with Client(loop.url, loop.work / "keys" / "merchant") as merchant:
        merchant.room("quickstart").revoke_consent("customers")
    sql = EXAMPLE / "spend.sql"
    _, _, err = loop.cli(capsys, "analysis", "check", "--sql", str(sql), ok=False)
    assert "revoked consent" in err
