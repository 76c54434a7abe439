"""Oracles for the policy fuzzer: small random rooms in DuckDB, and checks of
a query's output that never look at the checker, only at the plaintext.

- **suppression**: every output row is a group with at least ``k`` distinct
  identities of every input read. The groups are computed by our own SQL
  (the query's FROM, joins and WHERE, grouped by its group keys), so the
  query must output its keys; a query without keys is one global group.
- **influence**: for each person in turn, one measure (``amount``, then
  ``age``) moves by a large positive delta that differs per row; the query
  runs again and every output cell that moved is charged to that person. A
  cell that moves for 1..k-1 persons is a leak.
- **differencing**: so is a pair of numeric cells whose difference
  ``a - r*b`` cancels systematically (the same ``r`` zeroes two or more
  persons: the same rows stand behind both) and leaves 1..k-1 persons:
  everyone minus everyone-but-one, side by side or in two rows. Rows of
  different groups never cancel, because per-row deltas are unrelated; a
  person's age is one value repeated in every joined row of theirs, so for
  age only pairs within one row count.
- **shape**: no output value is a container or bytes (``MAX(x, n)`` returns a
  list of raw values).
- **error**: when the engine refuses to run accepted SQL, its message quotes no
  value of the room (conversion errors name the value that failed).

Identities, dimensions and timestamps are never perturbed, so groups do not
move; only measure values do. Measures are never NULL in generated rooms, so
an aggregate over a group of ``k`` persons moves for all ``k``.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import combinations
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from cleanroom.policy.check import Source
from cleanroom.policy.rules import AggregationRule

IDENTITY = "customer_hash"
CATEGORIES = ("grocery", "travel", "fuel")
SEGMENTS = ("a", "b", "c")
REGIONS = ("north", "south")
# per-row deltas: large (every aggregate over a perturbed row moves by far more than any
# generated HAVING / WHERE literal) and unrelated across rows, so two different rows'
# contributions never cancel by accident
_DELTA_RNG = random.Random(20260301)
AMOUNT_DELTAS = tuple(_DELTA_RNG.randint(100_000, 900_000) for _ in range(4096))
AGE_DELTAS = tuple(_DELTA_RNG.randint(100_000, 900_000) for _ in range(4096))
# the measures perturbed, one at a time: amount is per transaction row, age per person
MEASURES = ("amount", "age")
# at most this many numeric cells take part in the pairwise (differencing) check
MAX_PAIR_CELLS = 80

TransactionRow = tuple[int, str, Decimal, str | None, datetime]
CustomerRow = tuple[str, str | None, str | None, int, bool | None, str]


@dataclass(frozen=True)
class Room:
    """Two owners' rows: transactions (the bank) and customers (the merchant)."""

    transactions: tuple[TransactionRow, ...]
    customers: tuple[CustomerRow, ...]
    seed: int | None = None

    @property
    def persons(self) -> list[str]:
        ids = {row[1] for row in self.transactions} | {row[0] for row in self.customers}
        return sorted(ids, key=lambda p: (len(p), p))


def random_room(seed: int) -> Room:
    """8-20 persons with 0-6 transactions each, a few categories and segments,
    NULLs in dimensions, one or two yacht buyers and VIPs (tiny groups), some
    persons only on one side."""
    rng = random.Random(seed)
    n = rng.randint(8, 20)
    persons = [f"c{i}" for i in range(n)]
    customers: list[CustomerRow] = []
    missing = set(rng.sample(persons[4:], rng.randint(0, 2))) if rng.random() < 0.3 else set()
    vips = set(rng.sample(persons, rng.randint(1, 2))) if rng.random() < 0.85 else set()
    for pid in persons:
        if pid in missing:
            continue
        segment = "vip" if pid in vips else rng.choices([*SEGMENTS, None], [35, 30, 20, 10])[0]
        region = rng.choice([*REGIONS, *REGIONS, None])
        opted_in = rng.choice([True, False, None])
        customers.append((pid, segment, region, rng.randint(18, 90), opted_in, f"{pid}@mail.test"))
    buyers = [*persons, *(f"x{j}" for j in range(rng.randint(0, 2) if rng.random() < 0.3 else 0))]
    transactions: list[TransactionRow] = []
    start = datetime(2025, 11, 1)

    def add(pid: str, category: str | None, cents: int) -> None:
        minute = rng.randint(0, 180 * 24 * 60)
        ts = start + timedelta(minutes=minute, seconds=30)
        transactions.append((len(transactions) + 1, pid, Decimal(cents) / 100, category, ts))

    for pid in buyers:
        count = rng.randint(1 if pid in ("c1", "c2", "c3") else 0, 6)
        for _ in range(count):
            category = rng.choices([*CATEGORIES, None], [45, 30, 15, 10])[0]
            add(pid, category, rng.randint(100, 99_999))
    if rng.random() < 0.85:
        for pid in rng.sample(persons, rng.choice([1, 1, 1, 2])):
            add(pid, "yacht", rng.randint(5_000_000, 9_999_999))
    return Room(tuple(transactions), tuple(customers), seed)


def reference_room() -> Room:
    """A fixed room for the self-checks and regression vectors: twelve persons;
    c7 is the only yacht buyer and the only VIP; everyone else has three
    grocery and two travel purchases."""
    customers: list[CustomerRow] = []
    transactions: list[TransactionRow] = []
    start = datetime(2026, 3, 1, 0, 0, 30)
    for i in range(12):
        pid = f"c{i}"
        segment = "vip" if i == 7 else SEGMENTS[i % 3]
        customers.append((pid, segment, REGIONS[i % 2], 20 + 3 * i, i % 3 != 0, f"{pid}@mail.test"))
        for j, category in enumerate(["grocery"] * 3 + ["travel"] * 2):
            amount = Decimal(1000 + 37 * i + 11 * j) / 100
            ts = start + timedelta(hours=5 * i + j)
            transactions.append((len(transactions) + 1, pid, amount, category, ts))
    transactions.append((len(transactions) + 1, "c7", Decimal("99999.00"), "yacht", start))
    return Room(tuple(transactions), tuple(customers))


# -- the engine: one DuckDB connection, one room at a time ------------------------------

_TRANSACTIONS_VIEW = """
CREATE OR REPLACE VIEW transactions AS
SELECT txn_id, customer_hash,
       CAST(amount + CASE WHEN customer_hash = getvariable('fuzz_amount') THEN _delta ELSE 0 END
            AS DECIMAL(12, 2)) AS amount,
       category, ts
FROM _fuzz_transactions
"""
_CUSTOMERS_VIEW = """
CREATE OR REPLACE VIEW customers AS
SELECT customer_hash, segment, region,
       CAST(age + CASE WHEN customer_hash = getvariable('fuzz_age') THEN _delta ELSE 0 END
            AS INTEGER) AS age,
       opted_in, email
FROM _fuzz_customers
"""
_T_SCHEMA = pa.schema(
    [
        ("txn_id", pa.int64()),
        ("customer_hash", pa.string()),
        ("amount", pa.decimal128(12, 2)),
        ("category", pa.string()),
        ("ts", pa.timestamp("us")),
        ("_delta", pa.int64()),
    ]
)
_C_SCHEMA = pa.schema(
    [
        ("customer_hash", pa.string()),
        ("segment", pa.string()),
        ("region", pa.string()),
        ("age", pa.int32()),
        ("opted_in", pa.bool_()),
        ("email", pa.string()),
        ("_delta", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


class Engine:
    """Holds a room as the views ``transactions`` and ``customers`` (named as the
    sources), whose measures move for the person set by :meth:`run`'s
    ``perturb``."""

    def __init__(self) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET threads TO 1")  # one thread: float sums in one order
        self.room: Room | None = None

    def load(self, room: Room) -> None:
        if self.room is room:
            return
        t_rows = [(*row, AMOUNT_DELTAS[i % 4096]) for i, row in enumerate(room.transactions)]
        c_rows = [(*row, AGE_DELTAS[i % 4096]) for i, row in enumerate(room.customers)]
        t_table = pa.Table.from_pylist(
            [dict(zip(_T_SCHEMA.names, r, strict=True)) for r in t_rows], schema=_T_SCHEMA
        )
        c_table = pa.Table.from_pylist(
            [dict(zip(_C_SCHEMA.names, r, strict=True)) for r in c_rows], schema=_C_SCHEMA
        )
        self.con.register("_fuzz_t_arrow", t_table)
        self.con.register("_fuzz_c_arrow", c_table)
        self.con.execute("CREATE OR REPLACE TABLE _fuzz_transactions AS FROM _fuzz_t_arrow")
        self.con.execute("CREATE OR REPLACE TABLE _fuzz_customers AS FROM _fuzz_c_arrow")
        self.con.unregister("_fuzz_t_arrow")
        self.con.unregister("_fuzz_c_arrow")
        self.con.execute(_TRANSACTIONS_VIEW)
        self.con.execute(_CUSTOMERS_VIEW)
        self.room = room

    def run(self, sql: str, perturb: str | None = None, measure: str = "amount") -> Result:
        """Run ``sql``; with ``perturb``, that person's ``measure`` (amount or
        age) moves by its per-row delta."""
        if measure not in MEASURES:
            raise ValueError(f"not a perturbed measure: {measure!r}")
        if perturb is not None:
            if not re.fullmatch(r"[a-z][0-9]{1,4}", perturb):
                raise ValueError(f"not a generated person id: {perturb!r}")
            self.con.execute(f"SET VARIABLE fuzz_{measure} = '{perturb}'")
        try:
            cursor = self.con.execute(sql)
            rows = tuple(tuple(row) for row in cursor.fetchall())
            columns = tuple(d[0] for d in cursor.description or ())
        finally:
            if perturb is not None:
                self.con.execute(f"RESET VARIABLE fuzz_{measure}")
        return Result(columns, rows)


# -- violations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    oracle: str  # "suppression" | "influence" | "differencing" | "shape"
    detail: str

    def __str__(self) -> str:
        return f"[{self.oracle}] {self.detail}"


class OracleQueryError(Exception):
    """Our own recount of the groups failed in DuckDB (a generator bug, or an
    expression the checker rewrote, such as CAST into TRY_CAST)."""


class UnstableOutputError(Exception):
    """The same query gave two different outputs on the same data (samples,
    random functions): influence cannot be measured."""


def expected_k(sql: str, sources: dict[str, Source]) -> int:
    """The threshold the rules demand, decided without the checker: the largest
    ``min_distinct`` of the sources the text names, raised by the column
    thresholds of columns it names (any mention counts, as the rules say)."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
    k = 1
    for name, source in sources.items():
        rule = source.rule
        if name not in words or not isinstance(rule, AggregationRule):
            continue
        k = max(k, rule.min_distinct)
        k = max([k, *(v for column, v in rule.column_thresholds.items() if column in words)])
    return k


def _column(result: Result, name: str) -> int | None:
    matches = [i for i, c in enumerate(result.columns) if c.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def shape(result: Result) -> list[Violation]:
    """No cell is a list, struct, map or byte string."""
    found: list[Violation] = []
    for row in result.rows:
        for name, value in zip(result.columns, row, strict=True):
            if isinstance(value, (list, tuple, dict, bytes, bytearray, memoryview)):
                found.append(Violation("shape", f"column {name!r} holds {value!r:.80}"))
                return found
    return found


@dataclass(frozen=True)
class Groups:
    """How to recompute the groups behind a query's output rows: the scope's
    FROM (with its joins), WHERE, group-key expressions and the output column
    each key appears as, and the identity columns of every input it reads
    (``optional`` ones, on the nullable side of an outer join, may count 0)."""

    source: str
    where: str | None
    keys: tuple[tuple[str, str], ...]
    identities: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def sql(self) -> str:
        keys = [f'{expr} AS "_key{i}"' for i, (expr, _) in enumerate(self.keys)]
        counts = [f'COUNT(DISTINCT {ident}) AS "_n{i}"' for i, ident in enumerate(self.identities)]
        text = f"SELECT {', '.join([*keys, *counts])} FROM {self.source}"
        if self.where:
            text += f" WHERE {self.where}"
        if self.keys:
            text += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(self.keys)))
        return text


def suppression(
    engine: Engine, result: Result, groups: Sequence[Groups], k: int
) -> list[Violation]:
    found: list[Violation] = []
    for spec in groups:
        where = [_column(result, out) for _, out in spec.keys]
        if any(i is None for i in where):
            continue  # the output lacks a key: nothing to match rows with
        try:
            counted = engine.run(spec.sql())
        except duckdb.Error as exc:
            raise OracleQueryError(f"{spec.sql()}: {exc}") from exc
        width = len(spec.keys)
        table = {row[:width]: row[width:] for row in counted.rows}
        for row in result.rows:
            key = tuple(row[i] for i in where if i is not None)
            counts = table.get(key)
            if counts is None:
                found.append(
                    Violation(
                        "suppression", f"output row {row!r:.120} matches no group of {spec.sql()}"
                    )
                )
                continue
            for ident, n in zip(spec.identities, counts, strict=True):
                if n < k and not (n == 0 and ident in spec.optional):
                    found.append(
                        Violation(
                            "suppression",
                            f"output row {row!r:.120} is a group of {n} < k={k} distinct {ident}",
                        )
                    )
    return found


# -- influence ---------------------------------------------------------------------------


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if _numeric(a) and _numeric(b):
        x, y = float(a), float(b)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y))
    return bool(a == b)


def _same_rows(a: Result, b: Result) -> bool:
    if a.columns != b.columns or len(a.rows) != len(b.rows):
        return False
    return all(
        all(_same(x, y) for x, y in zip(r, s, strict=True))
        for r, s in zip(sorted(a.rows, key=repr), sorted(b.rows, key=repr), strict=True)
    )


Cell = tuple[tuple[Any, ...], int]  # (row identity, column index)


def _index(
    result: Result, key_at: Sequence[int] | None
) -> dict[tuple[Any, ...], tuple[Any, ...]] | None:
    """Rows by their key values, or None when keys repeat (or there are none and
    several rows): then rows are compared whole."""
    if key_at is None:
        return None
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in result.rows:
        key = tuple(row[i] for i in key_at)
        if key in rows:
            return None
        rows[key] = row
    return rows


def _whole_rows(result: Result) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(repr(v) for v in row) for row in result.rows)


@dataclass
class _Influence:
    """Which persons moved each cell, and by how much (numeric cells of base rows)."""

    measure: str
    persons: list[str]
    changed: dict[Cell, set[str]] = field(default_factory=dict)
    deltas: dict[Cell, dict[str, float]] = field(default_factory=dict)

    def charge(self, cell: Cell, person: str) -> None:
        self.changed.setdefault(cell, set()).add(person)

    def delta(self, cell: Cell, person: str) -> float:
        return self.deltas.get(cell, {}).get(person, 0.0)


def _key_columns(base: Result, keys: Sequence[str]) -> list[int] | None:
    at = [_column(base, name) for name in keys]
    if any(i is None for i in at) or (not at and len(base.rows) > 1):
        return None
    return [i for i in at if i is not None]


def _compare(
    state: _Influence, person: str, base: Result, out: Result, key_at: list[int] | None
) -> None:
    width = len(base.columns)
    indexed = _index(base, key_at)
    moved = _index(out, key_at)
    if indexed is None or moved is None:
        # rows compared whole: a row that is not in both runs changed entirely
        before, after = _whole_rows(base), _whole_rows(out)
        for row in (before - after) | (after - before):
            for col in range(width):
                state.charge((row, col), person)
        return
    for key in indexed.keys() | moved.keys():
        old, new = indexed.get(key), moved.get(key)
        for col in range(width):
            cell = (key, col)
            same = old is not None and new is not None and _same(old[col], new[col])
            if not same:
                state.charge(cell, person)
            if old is None or not _numeric(old[col]):
                continue
            if same:
                delta = 0.0
            elif new is not None and _numeric(new[col]):
                delta = float(new[col]) - float(old[col])
            else:
                delta = math.nan
            state.deltas.setdefault(cell, {})[person] = delta


def influence(engine: Engine, sql: str, keys: Sequence[str], k: int) -> list[Violation]:
    """Perturb each person's measures in turn and charge every output cell that
    moves; see the module docstring. Raises :class:`UnstableOutputError` when
    two runs on the same data differ."""
    room = engine.room
    if room is None:
        raise RuntimeError("load a room first")
    base = engine.run(sql)
    if not _same_rows(base, engine.run(sql)):
        raise UnstableOutputError(sql)
    key_at = _key_columns(base, keys)
    found: list[Violation] = []
    text = sql.lower()
    for measure, table in zip(MEASURES, ("transactions", "customers"), strict=True):
        if table not in text:
            continue  # the query cannot see this measure move
        state = _Influence(measure, room.persons)
        for person in state.persons:
            _compare(state, person, base, engine.run(sql, perturb=person, measure=measure), key_at)
        found += _single_cells(state, base, k)
        # a person's age is one value repeated in every joined row of theirs, so
        # overlapping groups (rows) cancel it by design: only pairs within a row then
        found += _pairs(state, base, k, across_rows=measure == "amount")
    return found


def _label(base: Result, cell: Cell) -> str:
    key, col = cell
    return f"column {base.columns[col]!r} of row {key!r:.80}"


def _single_cells(state: _Influence, base: Result, k: int) -> list[Violation]:
    found = []
    for cell, persons in state.changed.items():
        if 0 < len(persons) < k:
            who = sorted(persons, key=lambda p: (len(p), p))
            found.append(
                Violation(
                    "influence",
                    f"{_label(base, cell)} moves with the {state.measure} of {who} only (k={k})",
                )
            )
    return found


def _pairs(state: _Influence, base: Result, k: int, *, across_rows: bool) -> list[Violation]:
    """Pairs of numeric cells whose difference ``a - r*b`` cancels for two or more
    persons (the same rows behind both) and leaves 1..k-1 persons.

    Cancellation allows a small absolute slack (casts and ROUND move a cell by
    at most a unit), far below what any person's delta moves a cell by."""
    cells = [cell for cell, deltas in state.deltas.items() if any(v != 0 for v in deltas.values())][
        :MAX_PAIR_CELLS
    ]
    matrix = np.array([[state.delta(c, p) for p in state.persons] for c in cells], dtype=float)
    found: list[Violation] = []
    for i, j in combinations(range(len(cells)), 2):
        if not across_rows and cells[i][0] != cells[j][0]:
            continue
        a, b = matrix[i], matrix[j]
        active = (a != 0) | (b != 0)
        a, b = a[active], b[active]
        usable = (a != 0) & (b != 0) & np.isfinite(a) & np.isfinite(b)
        if usable.sum() < 2:
            continue
        with np.errstate(invalid="ignore"):
            ratios = np.unique(a[usable] / b[usable])
            slack = 2.0 * (1.0 + np.abs(ratios))[:, None]
            zero = np.abs(a[None, :] - ratios[:, None] * b[None, :]) <= slack
        zeroed = zero.sum(axis=1)
        left = len(a) - zeroed
        hits = np.flatnonzero((zeroed >= 2) & (left > 0) & (left < k))
        if hits.size:
            h = hits[0]
            people = [p for p, on in zip(state.persons, active, strict=True) if on]
            isolated = [p for p, z in zip(people, zero[h], strict=True) if not z]
            found.append(
                Violation(
                    "differencing",
                    f"{_label(base, cells[i])} - {ratios[h]:.6g} * {_label(base, cells[j])} "
                    f"moves with the {state.measure} of {isolated} only (k={k})",
                )
            )
    return found


def error_message(room: Room, sql: str, message: str) -> list[Violation]:
    """An engine error must not quote the room's data: conversion and overflow
    errors name the value that failed, which may be a person's identity or a
    suppressed group's value. Values the SQL itself spells are not counted."""
    values: set[str] = set()
    for _, pid, amount, category, ts in room.transactions:
        values |= {pid, f"{amount:f}", str(ts), category or ""}
        if amount >= 1000:  # DuckDB may print a decimal without its cents; short numbers are noise
            values |= {str(int(amount)), str(round(amount))}
    for pid, segment, region, _, _, email in room.customers:
        values |= {pid, email, segment or "", region or ""}
    text = sql.lower()
    quoted = sorted(
        v
        for v in values
        if len(v) >= 2
        and v.lower() not in text
        and re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", message)
    )
    if not quoted:
        return []
    return [Violation("error", f"the engine's error quotes {quoted[:5]}: {message[:200]}")]


def examine(
    engine: Engine,
    sql: str,
    *,
    keys: Sequence[str],
    groups: Iterable[Groups],
    k: int,
) -> list[Violation]:
    """All three oracles on ``sql`` (already checked, or deliberately not) over
    the loaded room."""
    result = engine.run(sql)
    return [
        *shape(result),
        *suppression(engine, result, list(groups), k),
        *influence(engine, sql, keys, k),
    ]
