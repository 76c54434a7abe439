"""Row-by-row schema validation of Arrow record batches (pure: no I/O).

:class:`BatchValidator` turns each incoming batch into a batch of exactly the
declared schema (column order and types), or raises :class:`ValidationError`
naming the first offending row (1-based, counting data rows across batches)
and column. Checks, in order, per column: the value converts to the declared
type without loss; no null where the column is not nullable; no NaN or
infinity in floats; the value is in the allowed list; the value is in range.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.datasets.schema import Column, Schema
from cleanroom.errors import ValidationError


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _compatible(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether values of ``source`` may be converted (checked, lossless) to ``target``."""
    if pa.types.is_dictionary(source):
        return _compatible(source.value_type, target)
    if source == target or pa.types.is_null(source) or _is_string(source):
        return True  # strings (CSV) are parsed; each value is checked
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
    if any(f(target) for f in numeric):
        return any(f(source) for f in numeric)
    for family in (pa.types.is_boolean, pa.types.is_date, pa.types.is_timestamp):
        if family(target):
            return bool(family(source))
    return False


def _first_true(mask: pa.Array) -> int | None:
    index = pc.index(pc.fill_null(mask, fill_value=False), value=True).as_py()
    return None if index < 0 else int(index)


def _first_failing_cast(values: pa.Array, target: pa.DataType) -> int:
    """Index of the first value that does not convert; binary search over prefixes."""
    low, high = 0, len(values) - 1  # invariant: the prefix [0..high] fails to convert
    while low < high:
        mid = (low + high) // 2
        try:
            pc.cast(values.slice(0, mid + 1), target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            high = mid
        else:
            low = mid + 1
    return low


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class BatchValidator:
    """Validates and converts a stream of batches against one :class:`Schema`."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.target = schema.arrow_schema()
        self.rows = 0
        self._bounds = {
            c.name: (c.min_scalar, c.max_scalar, self._allowed(c)) for c in schema.columns
        }

    @staticmethod
    def _allowed(column: Column) -> pa.Array | None:
        if column.allowed is None:
            return None
        return pc.cast(pa.array([str(v) for v in column.allowed]), column.arrow_type)

    def check_columns(self, names: list[str], types: list[pa.DataType] | None = None) -> None:
        """Check the input's column names (and types, when known) before any row."""
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ValidationError(f"the input has column {duplicate!r} twice", column=duplicate)
        missing = [n for n in self.schema.names if n not in names]
        extra = [n for n in names if n not in self.schema.names]
        if missing:
            raise ValidationError(
                f"the input lacks declared column(s) {', '.join(map(repr, missing))}",
                column=missing[0],
            )
        if extra:
            raise ValidationError(
                f"the input has column(s) {', '.join(map(repr, extra))} that the schema "
                "does not declare",
                column=extra[0],
            )
        if types is not None:
            for name, source in zip(names, types, strict=True):
                column = self.schema.column(name)
                if not _compatible(source, column.arrow_type):
                    raise ValidationError(
                        f"the input's type {source} cannot hold the declared type {column.type}",
                        column=name,
                    )

    def validate(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Return ``batch`` converted to the declared schema, or raise."""
        self.check_columns(batch.schema.names, batch.schema.types)
        arrays = [self._column(batch.column(c.name), c) for c in self.schema.columns]
        self.rows += batch.num_rows
        return pa.RecordBatch.from_arrays(arrays, schema=self.target)

    def _check(self, mask: pa.Array, column: Column, describe: Callable[[int], str]) -> None:
        index = _first_true(mask)
        if index is not None:
            raise ValidationError(describe(index), row=self.rows + index + 1, column=column.name)

    def _column(self, values: pa.Array, column: Column) -> pa.Array:
        target = column.arrow_type
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        # (1) lossless conversion to the declared type
        try:
            converted = pc.cast(values, target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _first_failing_cast(values, target)
            raise ValidationError(
                f"{_describe(values[bad].as_py())} is not a valid {column.type}",
                row=self.rows + bad + 1,
                column=column.name,
            ) from None

        def value(index: int) -> str:
            return _describe(converted[index].as_py())

        # (2) nullability
        if not column.nullable and converted.null_count:
            self._check(
                pc.is_null(converted),
                column,
                lambda _: "value is missing but the column is not nullable",
            )
        # (3) finite floats
        if pa.types.is_floating(target):
            self._check(
                pc.invert(pc.is_finite(converted)),
                column,
                lambda i: f"{value(i)} is not a finite number",
            )
        # (4) allowed values
        low, high, allowed = self._bounds[column.name]
        if allowed is not None:
            outside = pc.and_(
                pc.invert(pc.is_in(converted, value_set=allowed)), pc.is_valid(converted)
            )
            self._check(outside, column, lambda i: f"{value(i)} is not one of the allowed values")
        # (5) range
        if low is not None:
            self._check(
                pc.less(converted, low),
                column,
                lambda i: f"{value(i)} is below the minimum {column.minimum}",
            )
        if high is not None:
            self._check(
                pc.greater(converted, high),
                column,
                lambda i: f"{value(i)} is above the maximum {column.maximum}",
            )
        return converted
