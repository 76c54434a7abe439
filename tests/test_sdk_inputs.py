"""The SDK's inputs and outputs without a service: what a dataset can be published
from, the typed actions, decimals as floats, and when progress is drawn."""

from __future__ import annotations

import importlib
import io
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from cleanroom import Party, Schema, open_dataset, seal_dataset
from cleanroom.client import Room, actions
from cleanroom.client.datasets import _floats
from cleanroom.datasets.sources import open_source
from cleanroom.errors import DeserializationError, SchemaError
from cleanroom.governance import statements as st
from cleanroom.progress import ConsoleProgress, NoProgress, progress_for

SCHEMA = Schema.from_json(
    {
        "identity_column": "id",
        "columns": [
            {"name": "id", "type": "string", "nullable": False},
            {"name": "amount", "type": "decimal(10,2)"},
        ],
    }
)
ROWS = {"id": ["a", "b", "c"], "amount": [Decimal("1.50"), Decimal("2.25"), None]}


class ArrowStream:
    """A minimal foreign frame: it speaks only the Arrow PyCapsule stream interface."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._table.__arrow_c_stream__(requested_schema)


def _sources() -> dict[str, Any]:
    table = pa.table(
        ROWS, schema=pa.schema([("id", pa.string()), ("amount", pa.decimal128(10, 2))])
    )
    found: dict[str, Any] = {
        "pyarrow table": table,
        "pyarrow batch reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches()),
        "pandas": pd.DataFrame(ROWS),
        "duckdb relation": duckdb.connect().sql(
            "SELECT * FROM (VALUES ('a', 1.50::DECIMAL(10,2)), ('b', 2.25), ('c', NULL)) "
            "v(id, amount)"
        ),
        "arrow stream": ArrowStream(table),
    }
    try:  # optional, not a dependency: tested only where installed
        polars = importlib.import_module("polars")
    except ImportError:
        pass
    else:
        found["polars"] = polars.from_arrow(table)
    return found


@pytest.mark.parametrize("kind", sorted(_sources()))
def test_any_arrow_source_is_sealed_exactly(kind: str, tmp_path: Path, bank: Party) -> None:
    source = _sources()[kind]
    seal_dataset(source, schema=SCHEMA, owner=bank, output=tmp_path / "sealed", name="cards")
    table = open_dataset(tmp_path / "sealed", bank)
    assert table.to_pydict() == ROWS


def test_a_duckdb_relation_is_read_lazily_and_named() -> None:
    relation = duckdb.connect().sql("SELECT range AS id FROM range(10)")
    source = open_source(relation)
    assert source.description == "DuckDB relation"
    assert source.total is None  # counting would run the query twice
    assert sum(b.num_rows for b in source.batches) == 10


@pytest.mark.parametrize("thing", [[1, 2], {"id": ["a"]}, 3.5, object()])
def test_anything_else_is_refused_naming_its_type(thing: object) -> None:
    with pytest.raises(SchemaError, match=f"cannot read a dataset from {type(thing).__name__}"):
        open_source(thing)


def test_every_governance_action_has_a_typed_method() -> None:
    union = typing.get_args(typing.get_args(st.Action)[0])
    types = {typing.get_args(m.model_fields["type"].annotation)[0] for m in union}
    assert len(types) == len(union) == 11
    assert set(actions.TYPED) == set(actions.MODELS) == types
    for method in actions.TYPED.values():
        assert callable(getattr(Room, method)), method
        assert "room." in (getattr(Room, method).__doc__ or ""), f"{method}: no example"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sev-snp:" + "ab" * 48, {"platform": "sev-snp", "value": "ab" * 48}),
        (("tdx", "cd" * 48), {"platform": "tdx", "value": "cd" * 48}),
        (
            "insecure-virtual:" + "ef" * 32,
            {"platform": "insecure-virtual", "value": "insecure-virtual:" + "ef" * 32},
        ),
        (
            "insecure-virtual:insecure-virtual:" + "ef" * 32,
            {"platform": "insecure-virtual", "value": "insecure-virtual:" + "ef" * 32},
        ),
    ],
)
def test_measurements_are_written_as_the_cli_writes_them(
    spec: Any, expected: dict[str, str]
) -> None:
    assert actions.measurement(spec) == expected


def test_a_mistyped_action_names_its_field_before_anything_is_signed() -> None:
    with pytest.raises(DeserializationError, match="set_limits action is invalid at memory_mb"):
        actions.set_limits(60, 1, 10)
    with pytest.raises(DeserializationError, match="PLATFORM:HEX"):
        actions.measurement("sev-snp")
    with pytest.raises(DeserializationError, match="allow_insecure_virtual"):
        actions.set_measurements(
            [actions.measurement("insecure-virtual:" + "ef" * 32)],
            allow_insecure_virtual=False,
            terms=None,
        )
    with pytest.raises(TypeError, match="identity document"):
        actions.identity_document(3)  # type: ignore[arg-type]


def test_members_are_given_as_party_document_or_file(tmp_path: Path, bank: Party) -> None:
    bank.save(tmp_path / "bank")
    document = bank.identity_document()
    assert actions.identity_document(bank) == document
    assert actions.identity_document(document) == document
    assert actions.identity_document(str(tmp_path / "bank" / "identity.json")) == document


def test_decimals_become_floats_nested_ones_too() -> None:
    decimal = pa.decimal128(10, 2)
    table = pa.table(
        {
            "total": pa.array([Decimal("1.25"), None], decimal),
            "parts": pa.array([[Decimal("0.5")], []], pa.list_(decimal)),
            "pair": pa.array(
                [{"x": Decimal("2.00"), "n": 1}, None],
                pa.struct([("x", decimal), ("n", pa.int64())]),
            ),
            "name": ["a", "b"],
        }
    ).replace_schema_metadata({"cleanroom.job": "j"})
    floats = _floats(table)
    assert floats.schema.field("total").type == pa.float64()
    assert floats.schema.field("parts").type == pa.list_(pa.float64())
    assert floats.schema.field("pair").type == pa.struct([("x", pa.float64()), ("n", pa.int64())])
    assert floats.schema.metadata == {b"cleanroom.job": b"j"}
    assert floats.to_pydict() == {
        "total": [1.25, None],
        "parts": [[0.5], []],
        "pair": [{"x": 2.0, "n": 1}, None],
        "name": ["a", "b"],
    }
    plain = pa.table({"n": [1]})
    assert _floats(plain) is plain


def test_progress_is_drawn_where_watched_or_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    never, always = False, True
    with progress_for(never) as shown:
        assert isinstance(shown, NoProgress)
    with progress_for(None) as shown:  # pytest captures stderr: nobody watches
        assert isinstance(shown, NoProgress)
    with progress_for(always) as shown:
        assert isinstance(shown, ConsoleProgress)
    mine = NoProgress()
    with progress_for(mine) as shown:
        assert shown is mine
    with pytest.raises(TypeError, match="progress= takes"), progress_for("yes"):  # type: ignore[arg-type]
        pass
    monkeypatch.setattr("cleanroom.progress.watched", lambda console=None: True)
    with progress_for(None) as shown:  # a terminal or a notebook
        assert isinstance(shown, ConsoleProgress)


def test_console_progress_keeps_each_phase_as_a_line() -> None:
    from rich.console import Console  # noqa: PLC0415

    out = io.StringIO()
    shown = ConsoleProgress(Console(file=out, width=100))
    shown.start("Uploading cards", 10, "bytes")
    shown.advance(10)
    shown.start("job 5d1c... (offers): requested", None, "state")
    shown.start("job 5d1c... (offers): succeeded", None, "state")
    shown.close()
    text = out.getvalue()
    assert text.index("Uploading cards") < text.index("requested") < text.index("succeeded")
