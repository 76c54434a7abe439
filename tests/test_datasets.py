"""Sealed datasets: exact round trips from every input kind, invalid input that
writes nothing, and a tamper table in which every case is caught."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom import Party, Schema, decrypt_dataset, open_dataset, seal_dataset
from cleanroom.datasets import load_manifest
from cleanroom.datasets.manifest import DATA_FILE, MANIFEST_FILE, sealed_key_file
from cleanroom.errors import (
    DeserializationError,
    IntegrityError,
    SchemaError,
    StorageError,
    ValidationError,
)

SCHEMA = Schema.from_json(
    {
        "identity_column": "card_id",
        "columns": [
            {"name": "card_id", "type": "string", "nullable": False},
            {"name": "amount", "type": "decimal(12,2)", "nullable": False, "min": 0, "max": 50000},
            {"name": "category", "type": "string", "allowed": ["grocery", "travel", "fuel"]},
            {"name": "ts", "type": "timestamp"},
            {"name": "day", "type": "date"},
            {"name": "items", "type": "int32", "min": 0},
            {"name": "score", "type": "float64"},
            {"name": "online", "type": "boolean"},
            {"name": "settled", "type": "timestamp_tz"},
        ],
    }
)

CSV = """card_id,amount,category,ts,day,items,score,online,settled
c1,12.50,grocery,2024-01-02 03:04:05,2024-01-02,3,0.25,true,2024-01-02T03:04:05Z
c2,0.00,,2024-01-03 10:00:00,2024-01-03,,1.5,false,2024-01-03T10:00:00+02:00
c3,99.99,fuel,,,0,,,
"""


def expected_table() -> pa.Table:
    utc = dt.UTC
    return pa.table(
        {
            "card_id": ["c1", "c2", "c3"],
            "amount": pa.array(
                [Decimal("12.50"), Decimal("0.00"), Decimal("99.99")], pa.decimal128(12, 2)
            ),
            "category": ["grocery", None, "fuel"],
            "ts": pa.array(
                [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 3, 10), None],
                pa.timestamp("us"),
            ),
            "day": pa.array([dt.date(2024, 1, 2), dt.date(2024, 1, 3), None], pa.date32()),
            "items": pa.array([3, None, 0], pa.int32()),
            "score": [0.25, 1.5, None],
            "online": [True, False, None],
            "settled": pa.array(
                [
                    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=utc),
                    dt.datetime(2024, 1, 3, 8, tzinfo=utc),
                    None,
                ],
                pa.timestamp("us", tz="UTC"),
            ),
        },
        schema=SCHEMA.arrow_schema(),
    )


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "cards.csv"
    path.write_text(CSV)
    return path


def seal(source: Any, owner: Party, output: Path, schema: Schema = SCHEMA) -> Path:
    seal_dataset(source, schema=schema, owner=owner, output=output, name="cards")
    return output


# -- round trips ---------------------------------------------------------------


def test_csv_round_trip_is_exact(tmp_path: Path, csv_file: Path, bank: Party) -> None:
    out = seal(csv_file, bank, tmp_path / "sealed")
    table = open_dataset(out, bank)
    assert table.equals(expected_table())
    assert table.schema == SCHEMA.arrow_schema()


def test_parquet_arrow_and_pandas_round_trips(tmp_path: Path, bank: Party) -> None:
    table = expected_table()
    pq.write_table(table, tmp_path / "in.parquet")
    assert open_dataset(seal(tmp_path / "in.parquet", bank, tmp_path / "a"), bank).equals(table)
    assert open_dataset(seal(table, bank, tmp_path / "b"), bank).equals(table)
    frame = pd.DataFrame({"card_id": ["x", "y"], "amount": [Decimal("1.10"), Decimal("2.00")]})
    schema = Schema.from_json(
        {
            "identity_column": "card_id",
            "columns": [
                {"name": "card_id", "type": "string", "nullable": False},
                {"name": "amount", "type": "decimal(12,2)"},
            ],
        }
    )
    back = open_dataset(seal(frame, bank, tmp_path / "c", schema), bank)
    assert back.to_pydict() == {"card_id": ["x", "y"], "amount": [Decimal("1.10"), Decimal("2.00")]}


def test_compatible_input_types_are_converted(tmp_path: Path, bank: Party) -> None:
    schema = Schema.from_json(
        {
            "identity_column": "id",
            "columns": [
                {"name": "id", "type": "int64", "nullable": False},
                {"name": "v", "type": "float64"},
            ],
        }
    )
    source = pa.table({"v": pa.array([1, 2], pa.int16()), "id": pa.array([1, 2], pa.int8())})
    table = open_dataset(seal(source, bank, tmp_path / "s", schema), bank)
    assert table.schema == schema.arrow_schema()  # declared order, declared types
    assert table.to_pydict() == {"id": [1, 2], "v": [1.0, 2.0]}


def test_multi_batch_input_counts_rows_across_batches(tmp_path: Path, bank: Party) -> None:
    schema = Schema.from_json(
        {
            "identity_column": "id",
            "columns": [{"name": "id", "type": "int64", "nullable": False, "max": 299_998}],
        }
    )
    source = pa.table({"id": pa.array(range(300_000), pa.int64())})
    with pytest.raises(ValidationError) as info:
        seal(source, bank, tmp_path / "s", schema)
    assert info.value.row == 300_000
    assert info.value.column == "id"


def test_decrypt_writes_csv_and_parquet(tmp_path: Path, csv_file: Path, bank: Party) -> None:
    out = seal(csv_file, bank, tmp_path / "sealed")
    decrypt_dataset(out, bank, tmp_path / "plain.parquet")
    assert pq.read_table(tmp_path / "plain.parquet").equals(expected_table())
    decrypt_dataset(out, bank, tmp_path / "plain.csv")
    again = seal(tmp_path / "plain.csv", bank, tmp_path / "again")
    assert open_dataset(again, bank).equals(expected_table())


def test_manifest_never_contains_the_key_and_is_signed(
    tmp_path: Path, csv_file: Path, bank: Party
) -> None:
    out = seal(csv_file, bank, tmp_path / "sealed")
    manifest = load_manifest(out, bank.identity)
    assert manifest.rows == 3
    assert manifest.owner_fingerprint == bank.fingerprint
    from cleanroom.datasets.seal import unseal_key  # noqa: PLC0415

    key = unseal_key(out, manifest, bank)
    for name in (MANIFEST_FILE, sealed_key_file(bank.fingerprint)):
        text = (out / name).read_bytes()
        assert key not in text
        assert key.hex().encode() not in text


def test_data_cannot_be_read_without_the_key(tmp_path: Path, csv_file: Path, bank: Party) -> None:
    out = seal(csv_file, bank, tmp_path / "sealed")
    raw = (out / DATA_FILE).read_bytes()
    # long markers only: a two-byte value would appear in random bytes by chance
    for secret in (b"grocery", b"card_id", b"category"):
        assert secret not in raw
    with pytest.raises(duckdb.Error, match="encrypted"):
        duckdb.connect().execute(f"SELECT * FROM '{out / DATA_FILE}'").fetchall()
    with pytest.raises(OSError, match="encrypted"):
        pq.read_table(out / DATA_FILE)


# -- invalid input -------------------------------------------------------------

HEADER = CSV.splitlines()[0]
ROW = "c9,1.00,grocery,2024-01-02 03:04:05,2024-01-02,1,0.5,true,2024-01-02T03:04:05Z"


def _csv(*rows: str) -> str:
    return "\n".join([HEADER, ROW, *rows]) + "\n"


INVALID_CSV = {
    "too many fields": (_csv(ROW + ",extra"), 2, None, "has 10 fields but the header has 9"),
    "too few fields": (_csv("c1,1.00"), 2, None, "has 2 fields"),
    "not a decimal": (_csv(ROW.replace("1.00", "abc")), 2, "amount", "'abc' is not a valid"),
    "too many decimals": (_csv(ROW.replace("1.00", "1.005")), 2, "amount", "not a valid"),
    "below minimum": (_csv(ROW.replace("1.00", "-1.00")), 2, "amount", "below the minimum 0"),
    "above maximum": (_csv(ROW.replace("1.00", "50000.01")), 2, "amount", "above the maximum"),
    "missing required": (_csv(ROW.replace("c9,", ",", 1)), 2, "card_id", "not nullable"),
    "not allowed": (_csv(ROW.replace("grocery", "casino")), 2, "category", "allowed values"),
    "bad timestamp": (_csv(ROW.replace("2024-01-02 03:04:05", "yesterday")), 2, "ts", "timestamp"),
    "impossible date": (_csv(ROW.replace(",2024-01-02,", ",2024-02-30,")), 2, "day", "date"),
    "int overflow": (_csv(ROW.replace(",1,0.5", ",3000000000,0.5")), 2, "items", "int32"),
    "fractional int": (_csv(ROW.replace(",1,0.5", ",1.5,0.5")), 2, "items", "int32"),
    "nan float": (_csv(ROW.replace("0.5", "nan")), 2, "score", "not a finite number"),
    "bad boolean": (_csv(ROW.replace("true", "maybe")), 2, "online", "boolean"),
    "timestamp_tz without zone": (
        _csv(ROW.replace("T03:04:05Z", " 03:04:05")),
        2,
        "settled",
        "timestamp_tz",
    ),
    "error on a later row": (
        _csv(ROW, ROW, ROW.replace("fuel", "x").replace("grocery", "x")),
        4,
        "category",
        "allowed",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_CSV))
def test_invalid_csv_rows_name_row_and_column_and_write_nothing(
    tmp_path: Path, bank: Party, case: str
) -> None:
    text, row, column, message = INVALID_CSV[case]
    source = tmp_path / "in.csv"
    source.write_text(text)
    with pytest.raises(ValidationError, match=message) as info:
        seal(source, bank, tmp_path / "out")
    assert info.value.row == row
    assert info.value.column == column
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


INVALID_FILES: dict[str, tuple[str, bytes, str]] = {
    "empty file": ("in.csv", b"", "is empty"),
    "header only": ("in.csv", (HEADER + "\n").encode(), "no data rows"),
    "missing column": ("in.csv", b"card_id,amount\nc1,1.00\n", "lacks declared column"),
    "extra column": ("in.csv", (HEADER + ",secret\n" + ROW + ",x\n").encode(), "does not declare"),
    "duplicate column": ("in.csv", (HEADER + ",amount\n" + ROW + ",1\n").encode(), "twice"),
    "binary named csv": ("in.csv", b"\x00\x01\x02garbage", "binary data"),
    "latin-1 named csv": ("in.csv", (HEADER + "\n").encode() + b"caf\xe9,1\n", "not UTF-8"),
    "parquet named csv": ("in.csv", b"PAR1" + b"\x00" * 20 + b"PAR1", "is a Parquet file"),
    "csv named parquet": ("in.parquet", _csv().encode(), "is not a Parquet file"),
    "truncated parquet": ("in.parquet", b"PAR1\x00\x00\x00\x00PAR1", "not a readable Parquet"),
    "encrypted parquet": ("in.parquet", b"PARE" + b"\x00" * 20 + b"PARE", "encrypted Parquet"),
    "unknown extension": ("in.xlsx", b"whatever", "supported: .csv"),
}


@pytest.mark.parametrize("case", sorted(INVALID_FILES))
def test_invalid_files_write_nothing(tmp_path: Path, bank: Party, case: str) -> None:
    name, content, message = INVALID_FILES[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValidationError, match=message):
        seal(tmp_path / name, bank, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_parquet_with_incompatible_column_type(tmp_path: Path, bank: Party) -> None:
    table = expected_table().set_column(1, "amount", pa.array(["1", "2", "3"]).cast(pa.binary()))
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(ValidationError, match="cannot hold the declared type") as info:
        seal(tmp_path / "in.parquet", bank, tmp_path / "out")
    assert info.value.column == "amount"


def test_parquet_float_that_loses_data_as_int(tmp_path: Path, bank: Party) -> None:
    schema = Schema.from_json(
        {"identity_column": "id", "columns": [{"name": "id", "type": "int64", "nullable": False}]}
    )
    with pytest.raises(ValidationError, match=r"2\.5") as info:
        seal(pa.table({"id": [1.0, 2.5]}), bank, tmp_path / "out", schema)
    assert info.value.row == 2


def test_missing_input_and_existing_output(tmp_path: Path, csv_file: Path, bank: Party) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        seal(tmp_path / "nope.csv", bank, tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(StorageError, match="already exists"):
        seal(csv_file, bank, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_unsupported_source_type_is_refused_naming_it(tmp_path: Path, bank: Party) -> None:
    with pytest.raises(SchemaError, match="cannot read a dataset from list"):
        seal([1, 2], bank, tmp_path / "out")


# -- tampering with a sealed dataset --------------------------------------------


def _edit_json(path: Path, edit: Any) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture
def two_datasets(tmp_path: Path, csv_file: Path, bank: Party) -> tuple[Path, Path]:
    first = seal(csv_file, bank, tmp_path / "first")
    other_csv = tmp_path / "other.csv"
    other_csv.write_text(_csv())
    second = seal(other_csv, bank, tmp_path / "second")
    return first, second


def _key_file(directory: Path, party: Party) -> Path:
    return directory / sealed_key_file(party.fingerprint)


TAMPER = {
    "ciphertext bit flip in the middle": lambda d, o, p: _flip_byte(
        d / DATA_FILE, (d / DATA_FILE).stat().st_size // 2
    ),
    "ciphertext bit flip in the footer": lambda d, o, p: _flip_byte(
        d / DATA_FILE, (d / DATA_FILE).stat().st_size - 10
    ),
    "ciphertext truncated": lambda d, o, p: (d / DATA_FILE).write_bytes(
        (d / DATA_FILE).read_bytes()[:-100]
    ),
    "ciphertext extended": lambda d, o, p: (d / DATA_FILE).write_bytes(
        (d / DATA_FILE).read_bytes() + b"\x00"
    ),
    "ciphertext swapped from another dataset": lambda d, o, p: shutil.copy(
        o / DATA_FILE, d / DATA_FILE
    ),
    "manifest swapped from another dataset": lambda d, o, p: shutil.copy(
        o / MANIFEST_FILE, d / MANIFEST_FILE
    ),
    "manifest and ciphertext swapped, key kept": lambda d, o, p: (
        shutil.copy(o / MANIFEST_FILE, d / MANIFEST_FILE),
        shutil.copy(o / DATA_FILE, d / DATA_FILE),
    ),
    "sealed key swapped from another dataset": lambda d, o, p: shutil.copy(
        _key_file(o, p), _key_file(d, p)
    ),
    "manifest row count edited": lambda d, o, p: _edit_json(
        d / MANIFEST_FILE, lambda m: m["payload"].update(rows=4)
    ),
    "manifest digest edited": lambda d, o, p: _edit_json(
        d / MANIFEST_FILE, lambda m: m["payload"]["ciphertext"].update(sha256="0" * 64)
    ),
    "manifest schema loosened": lambda d, o, p: _edit_json(
        d / MANIFEST_FILE, lambda m: m["payload"]["schema"]["columns"][1].pop("max")
    ),
    "manifest signature removed": lambda d, o, p: _edit_json(
        d / MANIFEST_FILE, lambda m: m.update(signature="")
    ),
    "sealed key bit flip": lambda d, o, p: _edit_json(
        _key_file(d, p),
        lambda k: k.update(
            sealed=("B" if k["sealed"][5] == "A" else "A").join([k["sealed"][:5], k["sealed"][6:]])
        ),
    ),
    "sealed key deleted": lambda d, o, p: _key_file(d, p).unlink(),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_with_a_sealed_dataset_is_detected(
    two_datasets: tuple[Path, Path], bank: Party, case: str
) -> None:
    target, other = two_datasets
    TAMPER[case](target, other, bank)
    with pytest.raises(IntegrityError):
        open_dataset(target, bank)


def test_manifest_signed_by_another_party_is_refused(
    tmp_path: Path, csv_file: Path, bank: Party, merchant: Party
) -> None:
    out = seal(csv_file, bank, tmp_path / "s")
    _edit_json(
        out / MANIFEST_FILE,
        lambda m: m.update(
            merchant.sign_document(m["payload"], typ="cleanroom-dataset-manifest+jws")
        ),
    )
    with pytest.raises(IntegrityError):
        open_dataset(out, bank)


def test_another_party_cannot_open_the_dataset(
    tmp_path: Path, csv_file: Path, bank: Party, merchant: Party
) -> None:
    out = seal(csv_file, bank, tmp_path / "s")
    with pytest.raises(IntegrityError, match="different key"):
        open_dataset(out, merchant)  # the manifest is the bank's, not the merchant's
    # a thief who trusts the bank's manifest and holds the bank's sealed key file,
    # renamed as its own and relabelled for itself, still cannot open the key
    from cleanroom.datasets.seal import unseal_key  # noqa: PLC0415

    manifest = load_manifest(out, bank.identity)
    stolen = _key_file(out, merchant)
    shutil.copy(_key_file(out, bank), stolen)
    with pytest.raises(IntegrityError, match="different party"):
        unseal_key(out, manifest, merchant)
    _edit_json(stolen, lambda k: k.update(recipient=merchant.fingerprint))
    with pytest.raises(IntegrityError, match="decryption failed"):
        unseal_key(out, manifest, merchant)
    assert len(unseal_key(out, manifest, bank)) == 32  # the owner still can


def test_corrupt_manifest_json(tmp_path: Path, csv_file: Path, bank: Party) -> None:
    out = seal(csv_file, bank, tmp_path / "s")
    (out / MANIFEST_FILE).write_text("{")
    with pytest.raises(DeserializationError):
        open_dataset(out, bank)


def test_failed_decrypt_writes_no_output(tmp_path: Path, csv_file: Path, bank: Party) -> None:
    out = seal(csv_file, bank, tmp_path / "s")
    _flip_byte(out / DATA_FILE, 100)
    with pytest.raises(IntegrityError):
        decrypt_dataset(out, bank, tmp_path / "plain.csv")
    assert not (tmp_path / "plain.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
