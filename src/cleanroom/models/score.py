"""Score an Arrow table with a loaded model (pure: a table in, a table out).

The manifest's ``features`` name the columns that make the model's one input,
in order. Scoring (1) selects exactly those columns (every other column, the
identity column first of all, never reaches the model), (2) refuses a missing,
non-numeric or null-holding column, (3) casts each batch to one float32 matrix,
(4) runs the model, and (5) returns a table of only the outputs asked for
(``label`` by default; ``probabilities`` only when asked), row for row, after
checking every output has one row per input row.

Nothing here reads or writes a file; the thread count is the session's
(:func:`cleanroom.models.onnx.load` ``threads=``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from cleanroom.errors import ModelRefusedError, ValidationError
from cleanroom.models.manifest import TensorSpec
from cleanroom.models.onnx import Session

DEFAULT_BATCH_ROWS = 65_536

_ARROW_TYPES: dict[str, Any] = {
    "float": pa.float32(),
    "double": pa.float64(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}


def _arrow_type(spec: TensorSpec) -> Any:
    element = _ARROW_TYPES.get(spec.element_type)
    if element is None or len(spec.shape) not in {1, 2}:
        raise ModelRefusedError(
            f"output {spec.describe()} cannot become a column: "
            "it must be a 1-D or 2-D tensor of a numeric, boolean or string type"
        )
    if len(spec.shape) == 1:
        return element
    width = spec.shape[1]
    return pa.list_(element, width) if isinstance(width, int) else pa.list_(element)


def _column(result: Any, rows: int, name: str, arrow_type: Any) -> Any:
    array = np.asarray(result)
    if array.ndim == 0 or array.shape[0] != rows:
        raise ModelRefusedError(f"output {name!r} does not have one row per input row")
    try:
        if array.ndim == 1:
            return pa.array(array, type=arrow_type)
        flat = pa.array(array.reshape(-1), type=arrow_type.value_type)
        if pa.types.is_fixed_size_list(arrow_type):
            return pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size)
        offsets = pa.array(np.arange(rows + 1) * array.shape[1], type=pa.int32())
        return pa.ListArray.from_arrays(offsets, flat)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise ModelRefusedError(f"output {name!r} does not have its declared type") from exc


def _check_columns(table: Any, features: Sequence[str]) -> None:
    """(2) each feature column exists once, is numeric or boolean, and holds no nulls."""
    for name in features:
        matches = table.schema.get_all_field_indices(name)
        if not matches:
            raise ValidationError("the table has no such column", column=name)
        if len(matches) > 1:
            raise ValidationError("the table has this column more than once", column=name)
        kind = table.schema.field(name).type
        if not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind)
        ):
            raise ValidationError(f"is {kind}, the model takes numbers", column=name)
        if table.column(name).null_count:
            raise ValidationError("holds nulls, the model takes none", column=name)


def score(
    table: Any,
    session: Session,
    *,
    outputs: Sequence[str] = ("label",),
    batch_rows: int = DEFAULT_BATCH_ROWS,
    deadline: float | None = None,
) -> Any:
    """The model's ``outputs`` for each row of ``table`` (a ``pyarrow.Table``).

    ``deadline`` (a :func:`time.monotonic` instant) stops the model's runs when it
    passes: :class:`TimeoutError`."""
    model = session.manifest.model
    features = session.manifest.features
    if not features:
        raise ModelRefusedError("the model's manifest names no feature columns to score from")
    (tensor,) = model.inputs  # the manifest's invariant: features need exactly one input
    if tensor.element_type != "float":
        raise ModelRefusedError(f"input {tensor.describe()} is not a float tensor")
    names = list(outputs)
    if not names or len(set(names)) != len(names):
        raise ValueError("outputs must name each output once, and at least one")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError("batch_rows must be a positive integer")
    schema = pa.schema([(n, _arrow_type(model.output(n))) for n in names])
    _check_columns(table, features)  # (2)
    chunks: list[list[Any]] = [[] for _ in names]
    for batch in table.select(list(features)).to_batches(max_chunksize=batch_rows):  # (1)
        if batch.num_rows == 0:
            continue
        matrix = np.ascontiguousarray(  # (3)
            np.column_stack(
                [
                    # unsafe: an integer past 2**53 rounds instead of raising an
                    # error that would quote the row's value
                    batch.column(i).cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
                    for i in range(batch.num_columns)
                ]
            ),
            dtype=np.float32,
        )
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("scoring ran over its time limit")
        results = session.run({tensor.name: matrix}, names, timeout_s=left)  # (4)
        for i, (name, result) in enumerate(zip(names, results, strict=True)):  # (5)
            chunks[i].append(_column(result, batch.num_rows, name, schema.field(name).type))
    columns = [
        pa.chunked_array(c, type=schema.field(n).type) for n, c in zip(names, chunks, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=schema)
