"""Inputs a dataset can be sealed from, each opened as a stream of record batches:
CSV and Parquet files; pyarrow tables, record batches and batch readers; pandas
data frames; and anything else that speaks the Arrow PyCapsule interface
(``__arrow_c_stream__`` or ``__arrow_c_array__``): Polars frames, DuckDB
relations, and the like. Anything else is refused with a :class:`SchemaError`
naming its type, never guessed at.

Files are checked to be what their extension says before any parsing: a
Parquet file must carry the Parquet magic at both ends; a CSV file must be
UTF-8 text. CSV is read with every column as text, so conversion to the
declared type (and its error, naming row and column) happens in one place:
:mod:`cleanroom.datasets.validate`. In CSV an empty unquoted field is null and
``""`` is the empty string.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cleanroom.errors import SchemaError, StorageError, ValidationError

CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
BATCH_ROWS = 1 << 17
CSV_BLOCK = 4 << 20  # the streaming CSV reader yields one batch per block of input
_SNIFF = 1 << 16


@dataclass
class Source:
    """An opened input: column names, known types, and its batches."""

    description: str
    names: list[str]
    types: list[pa.DataType] | None
    batches: Iterator[pa.RecordBatch]
    total: int | None
    unit: str
    position: Callable[[], int]


SUPPORTED = (
    "a .csv or .parquet path, a pyarrow Table, RecordBatch or RecordBatchReader, "
    "a pandas or Polars DataFrame, a DuckDB relation, or any object with "
    "__arrow_c_stream__ (the Arrow PyCapsule interface)"
)


def open_source(source: Any) -> Source:
    """Open ``source`` as a :class:`Source`: see the module docstring for what it may be."""
    if isinstance(source, str | os.PathLike):
        return _open_path(Path(source))
    if isinstance(source, pa.Table):
        return _from_table(source, "Arrow table")
    if isinstance(source, pa.RecordBatch):
        return _from_table(pa.Table.from_batches([source]), "Arrow record batch")
    if isinstance(source, pa.RecordBatchReader):
        return _from_reader(source, "record batches")
    return _from_foreign(source)


def _from_foreign(source: Any) -> Source:
    """A frame or relation of another library: pandas, or anything speaking the
    Arrow PyCapsule interface; anything else is refused, naming its type."""
    kind = _kind(source)
    if kind.startswith("pandas "):  # by pandas' own converter: it knows object columns and indexes
        try:
            table = pa.Table.from_pandas(source, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValidationError(f"the data frame cannot be converted: {exc}") from exc
        return _from_table(table, "data frame")
    if hasattr(type(source), "__arrow_c_stream__"):
        try:
            reader = pa.RecordBatchReader.from_stream(source)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"the {kind} cannot be read as Arrow: {exc}") from exc
        return _from_reader(reader, kind, _length(source))
    if hasattr(type(source), "__arrow_c_array__"):
        try:
            batch = pa.record_batch(source)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"the {kind} cannot be read as Arrow: {exc}") from exc
        return _from_table(pa.Table.from_batches([batch]), kind)
    raise SchemaError(f"cannot read a dataset from {kind}: give {SUPPORTED}")


def _kind(source: Any) -> str:
    """What ``source`` is, for messages: ``polars DataFrame``, ``duckdb relation``..."""
    cls = type(source)
    package = cls.__module__.split(".")[0]
    if package in ("builtins", "__main__"):
        return cls.__name__
    package = package.lstrip("_")  # duckdb's classes live in _duckdb
    if package == "duckdb" and "Relation" in cls.__name__:
        return "DuckDB relation"
    return f"{package} {cls.__name__}"


def _length(source: Any) -> int | None:
    """The row count of a frame that knows it without running anything (Polars,
    pandas); None for lazy sources (a DuckDB relation would run its query)."""
    if _kind(source).startswith(("polars DataFrame", "pandas DataFrame")):
        try:
            return len(source)
        except (TypeError, ValueError):
            return None
    return None


def _from_table(table: pa.Table, description: str) -> Source:
    done = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal done
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            yield batch
            done += batch.num_rows

    return Source(
        description,
        table.schema.names,
        table.schema.types,
        batches(),
        table.num_rows,
        "rows",
        lambda: done,
    )


def _from_reader(
    reader: pa.RecordBatchReader, description: str, total: int | None = None
) -> Source:
    done = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal done
        for batch in reader:
            yield batch
            done += batch.num_rows

    return Source(
        description,
        reader.schema.names,
        reader.schema.types,
        batches(),
        total,
        "rows",
        lambda: done,
    )


def _open_path(path: Path) -> Source:
    if not path.exists():
        raise StorageError(f"input {path} does not exist")
    if not path.is_file():
        raise StorageError(f"input {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise ValidationError(f"input {path} is empty")
    with path.open("rb") as fh:
        head = fh.read(_SNIFF)
        fh.seek(max(0, size - 4))
        tail = fh.read(4)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _open_parquet(path, head, tail)
    if suffix in CSV_SUFFIXES:
        return _open_csv(path, head, size)
    raise ValidationError(
        f"input {path} has extension {suffix or '(none)'!r}; supported: .csv, .parquet, .pq"
    )


def _open_parquet(path: Path, head: bytes, tail: bytes) -> Source:
    if head[:4] == b"PARE" or tail == b"PARE":
        raise ValidationError(f"input {path} is an encrypted Parquet file; decrypt it first")
    if head[:4] != b"PAR1" or tail != b"PAR1":
        raise ValidationError(f"input {path} has a .parquet extension but is not a Parquet file")
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"input {path} is not a readable Parquet file: {exc}") from exc
    done = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal done
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                yield batch
                done += batch.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValidationError(f"input {path} is a corrupt Parquet file: {exc}") from exc

    return Source(
        str(path),
        schema.names,
        schema.types,
        batches(),
        parquet.metadata.num_rows,
        "rows",
        lambda: done,
    )


def _check_text(path: Path, head: bytes) -> None:
    if head[:4] in (b"PAR1", b"PARE"):
        raise ValidationError(f"input {path} has a .csv extension but is a Parquet file")
    if b"\x00" in head:
        raise ValidationError(f"input {path} has a .csv extension but contains binary data")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character may straddle the sniffed prefix
        if exc.start < len(head) - 3:
            raise ValidationError(
                f"input {path} is not UTF-8 text (invalid byte at offset {exc.start})"
            ) from None


def _csv_header(path: Path, head: bytes) -> list[str]:
    first_line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").lstrip("\ufeff")
    header = next(csv.reader([first_line]), [])
    if not header or header == [""]:
        raise ValidationError(f"input {path} has no header row")
    return [name.strip() for name in header]


def _first_bad_csv_row(path: Path, width: int) -> tuple[int, int]:
    """Slow path after a parse error: the 1-based data row with the wrong width."""
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for number, row in enumerate(reader, start=1):
            if len(row) != width:
                return number, len(row)
    return 0, width


def _open_csv(path: Path, head: bytes, size: int) -> Source:
    _check_text(path, head)
    names = _csv_header(path, head)
    try:
        stream = pa.OSFile(str(path), "rb")
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise _csv_error(path, names, exc) from exc

    blocks = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal blocks
        rows = 0
        try:
            for batch in reader:
                rows += batch.num_rows
                blocks += 1
                yield batch
        except pa.ArrowInvalid as exc:
            raise _csv_error(path, names, exc) from exc
        finally:
            stream.close()
        if rows == 0:
            raise ValidationError(f"input {path} has a header but no data rows")

    def position() -> int:
        # the reader reads ahead, so the file offset runs early; each batch is one block
        return min(size, blocks * CSV_BLOCK)

    return Source(str(path), reader.schema.names, None, batches(), size, "bytes", position)


def _csv_error(path: Path, names: list[str], exc: Exception) -> ValidationError:
    if "Expected" in str(exc) and "columns" in str(exc):
        row, got = _first_bad_csv_row(path, len(names))
        if row:
            return ValidationError(f"has {got} fields but the header has {len(names)}", row=row)
    return ValidationError(f"input {path} is not valid CSV: {exc}")


def plain_format(path: Path) -> str:
    """``"csv"`` or ``"parquet"``, by ``path``'s extension."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise ValidationError(f"output {path} must end in .csv, .parquet or .pq")


def write_plain(table: pa.Table, path: Path, file_format: str) -> None:
    """Write a plaintext table as ``"csv"`` or ``"parquet"``. CSV holds flat values
    only: a table with list, struct or map columns is refused before anything is
    written, naming them (Parquet holds them)."""
    if file_format == "parquet":
        pq.write_table(table, path)
    elif file_format == "csv":
        nested = [f"{f.name} ({f.type})" for f in table.schema if pa.types.is_nested(f.type)]
        if nested:
            raise SchemaError(
                f"CSV holds flat values only, and {', '.join(nested)} "
                f"{'is' if len(nested) == 1 else 'are'} nested: write a .parquet file instead"
            )
        try:
            pacsv.write_csv(table, str(path))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"the table cannot be written as CSV: {exc}") from exc
    else:
        raise ValueError(f"unknown plain format {file_format!r}")
