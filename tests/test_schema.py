from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cleanroom import Schema
from cleanroom.errors import DeserializationError, SchemaError, StorageError


def _schema(*columns: dict[str, Any], identity: str = "id") -> dict[str, Any]:
    return {
        "identity_column": identity,
        "columns": [{"name": "id", "type": "string", "nullable": False}, *columns],
    }


def test_parses_every_type() -> None:
    schema = Schema.from_json(
        _schema(
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": "int32", "min": -5, "max": 5},
            {"name": "l", "type": "int64", "allowed": [1, 2, 3]},
            {"name": "f", "type": "float64", "min": 0.5},
            {"name": "d", "type": "decimal(12,2)", "max": "999.99"},
            {"name": "s", "type": "string", "allowed": ["x", "y"]},
            {"name": "dt", "type": "date", "min": "2020-01-01"},
            {"name": "ts", "type": "timestamp", "max": "2030-01-01 00:00:00"},
            {"name": "tz", "type": "timestamp_tz"},
        )
    )
    types = schema.arrow_schema().types
    assert types[4] == pa.float64()
    assert types[5] == pa.decimal128(12, 2)
    assert types[9] == pa.timestamp("us", tz="UTC")
    assert Schema.from_json(schema.to_json()) == schema


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_schema({"name": "x", "type": "varchar"}), "unknown column type 'varchar'"),
        (_schema({"name": "x", "type": "decimal(40,2)"}), "unknown column type"),
        (_schema({"name": "x", "type": "decimal(5,6)"}), "unknown column type"),
        (_schema({"name": "bad name", "type": "string"}), "column name 'bad name' is invalid"),
        (_schema({"name": "x;drop", "type": "string"}), "is invalid"),
        (_schema({"name": "ID", "type": "string"}), "declared twice"),
        (_schema({"name": "x", "type": "boolean", "min": 0}), "min/max are not allowed"),
        (_schema({"name": "x", "type": "string", "max": "z"}), "min/max are not allowed"),
        (_schema({"name": "x", "type": "int64", "min": 5, "max": 1}), "above max"),
        (_schema({"name": "x", "type": "int64", "min": "abc"}), "'abc' is not a valid int64"),
        (_schema({"name": "x", "type": "date", "min": "2020-13-01"}), "not a valid date"),
        (_schema({"name": "x", "type": "float64", "allowed": [1]}), "allowed values need"),
        (_schema({"name": "x", "type": "string", "allowed": []}), "is empty"),
        (_schema({"name": "x", "type": "int64", "allowed": ["a"]}), "not a valid int64"),
        (_schema(identity="nope"), "has no column 'nope'"),
        (
            {"identity_column": "id", "columns": [{"name": "id", "type": "string"}]},
            "must be declared",
        ),
    ],
)
def test_invalid_schemas_are_named(document: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        Schema.from_json(document)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"columns": []}, "identity_column"),
        ({"identity_column": "id", "columns": []}, "columns"),
        ({"identity_column": "id", "columns": [{"name": "id"}]}, "columns.0.type"),
        (
            {
                "identity_column": "id",
                "columns": [{"name": "id", "type": "string", "nullable": "no"}],
            },
            "nullable",
        ),
        (
            {"identity_column": "id", "columns": [{"name": "id", "type": "string"}], "extra": 1},
            "extra",
        ),
        ([], "schema is invalid"),
    ],
)
def test_malformed_schema_documents(document: Any, message: str) -> None:
    with pytest.raises(DeserializationError, match=message):
        Schema.from_json(document)


def test_schema_file_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        Schema.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DeserializationError, match="not valid JSON"):
        Schema.load(tmp_path / "bad.json")
