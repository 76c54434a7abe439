"""Declared dataset schemas: the contract a data owner publishes for its data.

A schema lists columns in order, each with a type, nullability and optional
constraints (allowed values, an inclusive range), and names the identity
column: the column whose distinct values are the people or entities the rows
describe (privacy thresholds count these later). The identity column must be
declared non-nullable.

Schema file (JSON)::

    {
      "identity_column": "card_id",
      "columns": [
        {"name": "card_id",  "type": "string", "nullable": false},
        {"name": "amount",   "type": "decimal(12,2)", "nullable": false, "min": 0},
        {"name": "category", "type": "string", "allowed": ["grocery", "travel"]},
        {"name": "ts",       "type": "timestamp"}
      ]
    }

Types: boolean, int32, int64, float64, decimal(P,S), string, date, timestamp
(no time zone) and timestamp_tz (normalised to UTC). ``binary`` exists only for
the bytes of a model asset (:data:`MODEL_SCHEMA`); a dataset manifest refuses it
anywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from cleanroom.errors import SchemaError
from cleanroom.wire import WireModel, parse_model, read_json_file

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow loads on first use, not on import: the CLI and the SDK read schemas in
# manifests and ledgers (to verify a room) long before any of them touches data

_SIMPLE_TYPES: tuple[str, ...] = (
    "boolean",
    "int32",
    "int64",
    "float64",
    "string",
    "date",
    "timestamp",
    "timestamp_tz",
)
BINARY = "binary"  # model assets only (see the module's docstring)
_DECIMAL = re.compile(r"decimal\((\d{1,2}),\s*(\d{1,2})\)")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_RANGE_TYPES = frozenset({"int32", "int64", "float64", "date", "timestamp", "timestamp_tz"})
_ALLOWED_TYPES = frozenset({"int32", "int64", "string"})
MAX_COLUMNS = 1024
MAX_ALLOWED_VALUES = 10_000

Bound = StrictInt | StrictFloat | StrictStr
Value = StrictInt | StrictStr


def check_type(type_name: str) -> tuple[int, int] | None:
    """Refuse an unknown type name (:class:`SchemaError`), without loading pyarrow;
    returns the precision and scale of a decimal type."""
    if type_name in _SIMPLE_TYPES or type_name == BINARY:
        return None
    match = _DECIMAL.fullmatch(type_name)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if 1 <= precision <= 38 and 0 <= scale <= precision:
            return precision, scale
    known = ", ".join([*_SIMPLE_TYPES, "decimal(P,S)"])
    raise SchemaError(f"unknown column type {type_name!r}; use one of {known}")


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type of a declared type name; raises :class:`SchemaError`."""
    import pyarrow as pa  # noqa: PLC0415  (see the note at the top)

    decimal = check_type(type_name)
    if decimal is not None:
        return pa.decimal128(*decimal)
    simple = {
        "boolean": pa.bool_(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamp_tz": pa.timestamp("us", tz="UTC"),
        BINARY: pa.binary(),
    }
    return simple[type_name]


def _greater(low: pa.Scalar, high: pa.Scalar) -> bool:
    import pyarrow.compute as pc  # noqa: PLC0415

    return bool(pc.greater(low, high).as_py())


def _to_scalar(value: Bound, column: str, type_name: str, what: str) -> pa.Scalar:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    try:
        return pc.cast(pa.scalar(str(value)), arrow_type(type_name))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(
            f"column {column!r}: {what} {value!r} is not a valid {type_name}"
        ) from exc


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    allowed: tuple[int | str, ...] | None = None
    minimum: int | float | str | None = None
    maximum: int | float | str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _COLUMN_NAME.fullmatch(self.name):
            raise SchemaError(
                f"column name {self.name!r} is invalid: use letters, digits and '_', "
                "starting with a letter or '_', at most 63 characters"
            )
        check_type(self.type)
        ranged = self.minimum is not None or self.maximum is not None
        if ranged and self.type not in _RANGE_TYPES and not self.type.startswith("decimal"):
            raise SchemaError(f"column {self.name!r}: min/max are not allowed on {self.type}")
        if self.allowed is not None:
            if self.type not in _ALLOWED_TYPES:
                raise SchemaError(
                    f"column {self.name!r}: allowed values need an int32, int64 or string column"
                )
            if not self.allowed:
                raise SchemaError(f"column {self.name!r}: the list of allowed values is empty")
            for value in self.allowed:
                _to_scalar(value, self.name, self.type, "allowed value")
        low = self.min_scalar
        high = self.max_scalar
        if low is not None and high is not None and _greater(low, high):
            raise SchemaError(
                f"column {self.name!r}: min {self.minimum} is above max {self.maximum}"
            )

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type(self.type)

    @property
    def min_scalar(self) -> pa.Scalar | None:
        if self.minimum is None:
            return None
        return _to_scalar(self.minimum, self.name, self.type, "min")

    @property
    def max_scalar(self) -> pa.Scalar | None:
        if self.maximum is None:
            return None
        return _to_scalar(self.maximum, self.name, self.type, "max")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "nullable": self.nullable}
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        if self.description:
            out["description"] = self.description
        return out


class _ColumnWire(WireModel):
    name: StrictStr
    type: StrictStr
    nullable: StrictBool = True
    allowed: list[Value] | None = Field(default=None, max_length=MAX_ALLOWED_VALUES)
    min: Bound | None = None
    max: Bound | None = None
    description: StrictStr = ""


class _SchemaWire(WireModel):
    identity_column: StrictStr
    columns: list[_ColumnWire] = Field(min_length=1, max_length=MAX_COLUMNS)


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    identity_column: str

    def __post_init__(self) -> None:
        if not self.columns:
            raise SchemaError("a schema needs at least one column")
        seen: set[str] = set()
        for column in self.columns:
            if column.name.lower() in seen:
                raise SchemaError(f"column {column.name!r} is declared twice")
            seen.add(column.name.lower())
        identity = self.column(self.identity_column)
        if identity.nullable:
            raise SchemaError(
                f'identity column {self.identity_column!r} must be declared "nullable": false'
            )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise SchemaError(f"schema has no column {name!r}")

    def arrow_schema(self) -> pa.Schema:
        import pyarrow as pa  # noqa: PLC0415

        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "identity_column": self.identity_column,
            "columns": [c.to_json() for c in self.columns],
        }

    @classmethod
    def from_json(cls, data: Any) -> Schema:
        wire = parse_model(_SchemaWire, data, what="schema")
        columns = tuple(
            Column(
                name=c.name,
                type=c.type,
                nullable=c.nullable,
                allowed=tuple(c.allowed) if c.allowed is not None else None,
                minimum=c.min,
                maximum=c.max,
                description=c.description,
            )
            for c in wire.columns
        )
        return cls(columns=columns, identity_column=wire.identity_column)

    @classmethod
    def load(cls, path: Path) -> Schema:
        return cls.from_json(read_json_file(Path(path), what="schema file"))


MODEL_SCHEMA = Schema(
    columns=(
        Column("model", "string", nullable=False, description="the model's name"),
        Column("onnx", BINARY, nullable=False, description="the ONNX bytes"),
    ),
    identity_column="model",
)
"""The schema of a model asset: one row, the model's name and its ONNX bytes."""
