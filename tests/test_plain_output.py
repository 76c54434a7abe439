"""Writing a plaintext result: CSV holds flat values only. A result with list,
struct or map columns written as CSV is a clear error naming the columns, and
nothing is left at the output path (Parquet holds them)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom.datasets.sources import write_plain
from cleanroom.errors import SchemaError
from cleanroom.fs import atomic_path


def test_nested_columns_are_refused_as_csv_and_kept_as_parquet(tmp_path: Path) -> None:
    table = pa.table(
        {
            "segment": ["a", "b"],
            "ids": [[1, 2], [3]],
            "pair": [{"x": 1}, {"x": 2}],
        }
    )
    out = tmp_path / "result.csv"
    with (
        pytest.raises(SchemaError, match=r"ids \(list<item: int64>\), pair .* are nested"),
        atomic_path(out) as tmp,
    ):
        write_plain(table, tmp, "csv")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    write_plain(table, tmp_path / "result.parquet", "parquet")
    assert pq.read_table(tmp_path / "result.parquet").equals(table)
    write_plain(table.select(["segment"]), out, "csv")
    assert out.read_text().splitlines() == ['"segment"', '"a"', '"b"']
