"""Mock twins of datasets: rows made up from a declared schema, for developing queries.

An analyst never sees a room's data, but needs rows to write SQL against. A
mock has the dataset's exact columns and types and respects every declared
value domain (allowed values, ranges, nullability), so a query that runs on
the mock runs on the real data, and the policy check's rewrite can be tried
on it locally. Its values mean nothing.

Invariants:

* A mock is a function of the schema, the hints and the seed alone. It never
  reads, samples or is fitted to the real rows (the caller does not hold
  them; nothing here could take them): it reveals nothing about the data.
* The same schema, hints and seed give the same table, value for value; each
  column draws from its own generator (seeded by the seed, the dataset's name
  and the column's name), so adding a column leaves the others unchanged.
* Every value passes the dataset's own validation
  (:class:`cleanroom.datasets.validate.BatchValidator`).
* Identity values and join columns are drawn from one shared pool of
  ``persons`` made-up people, spelt the same way in every mock, so mocks of
  datasets that join on a column do join. Dimensions take few values with a
  skewed frequency, so some groups fall below a threshold as real ones do.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from cleanroom.datasets.schema import Column, Schema

__all__ = ["MockSpec", "mock_table"]

MAX_ROWS = 1_000_000
NULL_SHARE = 0.05  # of a nullable column's values (never the identity's)
GROUP_VALUES = 6  # values a dimension without a declared domain takes
DEFAULT_SPAN = 1000  # the range of a number without declared bounds
_FIRST_DAY = date(2025, 1, 1)
_DAYS = 365
_INT_LIMITS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class MockSpec:
    """How to make a mock besides the schema: its size, the pool of people, and
    which columns join (``linked``) or group (``grouped``) in queries. The CLI
    takes the last two from the dataset's analysis rule."""

    rows: int = 1000
    persons: int = 200
    seed: int = 0
    linked: frozenset[str] = frozenset()
    grouped: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 1 <= self.rows <= MAX_ROWS:
            raise ValueError(f"a mock has 1 to {MAX_ROWS:,} rows, not {self.rows}")
        if self.persons < 1:
            raise ValueError("a mock needs at least one person")

    @classmethod
    def of(
        cls,
        *,
        rows: int = 1000,
        persons: int = 200,
        seed: int = 0,
        linked: Collection[str] = (),
        grouped: Collection[str] = (),
    ) -> MockSpec:
        return cls(rows, persons, seed, frozenset(linked), frozenset(grouped))


def mock_table(schema: Schema, name: str, spec: MockSpec | None = None) -> pa.Table:
    """A made-up table of ``schema`` for the dataset ``name`` (see the module's invariants)."""
    spec = spec or MockSpec()
    arrays = [
        pa.array(_values(column, schema, name, spec), type=column.arrow_type)
        for column in schema.columns
    ]
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema())


def _rng(spec: MockSpec, name: str, column: str) -> random.Random:
    material = f"cleanroom mock v1\x00{spec.seed}\x00{name}\x00{column}".encode()
    # not for secrets: reproducible made-up values are the point
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))  # noqa: S311


def _skewed(rng: random.Random, choices: Sequence[Any], count: int) -> list[Any]:
    """Each value about half as frequent as the one before it: small groups exist."""
    weights = [0.5**i for i in range(len(choices))]
    return rng.choices(list(choices), weights=weights, k=count)


def _values(column: Column, schema: Schema, name: str, spec: MockSpec) -> list[Any]:
    rng = _rng(spec, name, column.name)
    pooled = column.name == schema.identity_column or column.name in spec.linked
    if column.allowed is not None:
        domain = list(column.allowed)
        values = (
            _skewed(rng, domain, spec.rows)
            if column.name in spec.grouped
            else [rng.choice(domain) for _ in range(spec.rows)]
        )
    elif pooled:
        # every person once (in order) before any twice: a mock of no more rows than
        # people has one row per person, as a customer table does
        numbers = [i if i < spec.persons else rng.randrange(spec.persons) for i in range(spec.rows)]
        values = [_person(column, n) for n in numbers]
    elif column.name in spec.grouped:
        values = _skewed(rng, _group_values(column), spec.rows)
    else:
        values = [_value(column, rng) for _ in range(spec.rows)]
    if column.nullable and column.name != schema.identity_column:
        values = [None if rng.random() < NULL_SHARE else v for v in values]
    return values


def _person(column: Column, number: int) -> Any:
    """Person ``number`` of the pool, spelt the same in every mock (so mocks join)."""
    if column.type in _INT_LIMITS:
        low, high = _int_bounds(column)
        return low + number % (high - low + 1)
    if column.type == "string":
        return f"person-{number:06d}"
    return _value(column, random.Random(number))  # noqa: S311 - joins on other types are rare


def _group_values(column: Column) -> list[Any]:
    """A few distinct values of a dimension that declares no allowed values."""
    if column.type == "string":
        return [f"{column.name}_{i}" for i in range(GROUP_VALUES)]
    if column.type == "boolean":
        return [True, False]
    rng = random.Random(column.name)  # noqa: S311 - made-up values, not secrets
    found: list[Any] = []
    for _ in range(GROUP_VALUES * 20):
        value = _value(column, rng)
        if value not in found:
            found.append(value)
        if len(found) == GROUP_VALUES:
            break
    return sorted(found)


def _value(column: Column, rng: random.Random) -> Any:  # noqa: PLR0911 - one return per type
    kind = column.type
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in _INT_LIMITS:
        low, high = _int_bounds(column)
        return rng.randint(low, high)
    if kind == "float64":
        low_f, high_f = _number_bounds(column, -1e300, 1e300)
        return round(rng.uniform(low_f, high_f), 2) if high_f - low_f > 0.02 else low_f
    if kind.startswith("decimal"):
        return _decimal(column, rng)
    if kind == "string":
        return f"{column.name}-{rng.randrange(1_000_000):06d}"
    if kind == "date":
        low_d, high_d = _date_bounds(column)
        return low_d + timedelta(days=rng.randrange((high_d - low_d).days + 1))
    if kind in ("timestamp", "timestamp_tz"):
        low_t, high_t = _time_bounds(column)
        span = int((high_t - low_t).total_seconds())
        moment = low_t + timedelta(seconds=rng.randrange(span + 1))
        return moment.replace(tzinfo=UTC) if kind == "timestamp_tz" else moment
    raise TypeError(f"no mock values for column type {kind!r}")  # Schema admits no other


def _bounds(column: Column) -> tuple[Any, Any]:
    low = column.min_scalar.as_py() if column.min_scalar is not None else None
    high = column.max_scalar.as_py() if column.max_scalar is not None else None
    return low, high


def _int_bounds(column: Column) -> tuple[int, int]:
    floor, ceiling = _INT_LIMITS[column.type]
    low, high = _bounds(column)
    if low is None and high is None:
        return 0, DEFAULT_SPAN
    if low is None:
        return max(floor, int(high) - DEFAULT_SPAN), int(high)
    if high is None:
        return int(low), min(ceiling, int(low) + DEFAULT_SPAN)
    return int(low), int(high)


def _number_bounds(column: Column, floor: float, ceiling: float) -> tuple[float, float]:
    low, high = _bounds(column)
    if low is None and high is None:
        return 0.0, float(DEFAULT_SPAN)
    if low is None:
        return max(floor, float(high) - DEFAULT_SPAN), float(high)
    if high is None:
        return float(low), min(ceiling, float(low) + DEFAULT_SPAN)
    return float(low), float(high)


def _decimal(column: Column, rng: random.Random) -> Decimal:
    kind = column.arrow_type
    scale = kind.scale
    largest = Decimal(10) ** (kind.precision - scale) - Decimal(1) / (Decimal(10) ** scale)
    low, high = _bounds(column)
    low_d = Decimal(low) if low is not None else None
    high_d = Decimal(high) if high is not None else None
    if low_d is None and high_d is None:
        low_d, high_d = Decimal(0), min(largest, Decimal(DEFAULT_SPAN))
    elif low_d is None:
        low_d = max(-largest, high_d - DEFAULT_SPAN)  # type: ignore[operator]
    elif high_d is None:
        high_d = min(largest, low_d + DEFAULT_SPAN)
    unit = Decimal(1).scaleb(-scale)
    # whole steps of the column's scale between the bounds, rounded inwards
    first = (low_d / unit).to_integral_value(rounding="ROUND_CEILING")
    last = (high_d / unit).to_integral_value(rounding="ROUND_FLOOR")  # type: ignore[operator]
    return (Decimal(rng.randint(int(first), int(last))) * unit).quantize(unit)


def _date_bounds(column: Column) -> tuple[date, date]:
    low, high = _bounds(column)
    if low is None and high is None:
        return _FIRST_DAY, _FIRST_DAY + timedelta(days=_DAYS - 1)
    if low is None:
        return high - timedelta(days=_DAYS - 1), high
    if high is None:
        return low, low + timedelta(days=_DAYS - 1)
    return low, high


def _time_bounds(column: Column) -> tuple[datetime, datetime]:
    given = _bounds(column)
    low: datetime | None = given[0].replace(tzinfo=None) if given[0] is not None else None
    high: datetime | None = given[1].replace(tzinfo=None) if given[1] is not None else None
    start = datetime(_FIRST_DAY.year, _FIRST_DAY.month, _FIRST_DAY.day)
    year = timedelta(days=_DAYS)
    if low is None:
        return (start, start + year) if high is None else (high - year, high)
    return (low, low + year) if high is None else (low, high)
