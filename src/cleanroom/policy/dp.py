"""Differentially private release inside the enclave, with OpenDP's Laplace noise.

Given the checked row query of a DP analysis (one row per contribution: the
privacy unit, the declared group keys, the values) and its specification:

1. contribution bounding: a unit with n > k = ``max_contributions`` rows has
   each row weighted k / n (every other row weighs 1), so one person's rows
   weigh at most k in all: one person moves the counts by at most k in total
   and the clamped sums by at most k * max(|lower|, |upper|). The weight is
   the expected share of rows a random sample of k would keep, without the
   sampling noise, and it costs one count per unit instead of a sort;
2. exact weighted aggregates per declared group key, values clamped to their
   bounds; rows whose key was not declared are dropped (after weighting, so
   they still use up their unit's k) and every declared key is reported (an
   absent group is a count of 0, so the key set reveals nothing);
3. noise: epsilon is split evenly over the noisy statistics (one count if any
   count or mean is asked, one sum per sum or mean), each released with
   OpenDP's Laplace mechanism at scale = sensitivity / share; the privacy map
   of every measurement is checked against its share before release. Means are
   noisy sum / noisy count, clamped to the bounds (post-processing).

Pure DP: delta is 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import opendp.prelude as dp
import pyarrow as pa
import sqlglot
from sqlglot import exp

from cleanroom.errors import OperationalError
from cleanroom.policy.rules import DpSpec

dp.enable_features("contrib")


@dataclass(frozen=True)
class Statistic:
    """One noisy statistic: what it sums, its sensitivity and its epsilon share."""

    name: str
    sensitivity: float
    epsilon: float

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon


def plan(spec: DpSpec) -> list[Statistic]:
    """The noisy statistics a specification needs, with their calibration."""
    k = spec.max_contributions
    needs_count = any(a.function in ("count", "mean") for a in spec.aggregates)
    sums = [a for a in spec.aggregates if a.function in ("sum", "mean")]
    share = float(spec.epsilon) / (len(sums) + (1 if needs_count else 0))
    statistics = [Statistic("__count", float(k), share)] if needs_count else []
    for aggregate in sums:
        bound = max(abs(x) for x in aggregate.bounds)
        statistics.append(Statistic(f"__sum_{aggregate.name}", k * bound, share))
    return statistics


def _quoted(name: str) -> str:
    return exp.column(name, quoted=True).sql("duckdb")


def _number(value: float) -> str:
    """A bound as a SQL literal without an exponent: DuckDB reads it as a
    DECIMAL, so clamping keeps the column's own numeric type (no cast per row)."""
    return exp.convert(Decimal(repr(value))).sql("duckdb") if value % 1 else str(int(value))


def aggregate_sql(row_sql: str, spec: DpSpec) -> str:
    """The SQL the enclave runs: weighted contributions, exact clamped aggregates.

    All rows are aggregated as they are; the units over the bound are found
    by one count per unit, and what their rows weigh above k / n is taken
    off again (an aggregate of their rows only: none when nobody is over).
    """
    unit, k = _quoted(spec.unit), int(spec.max_contributions)
    groups = [_quoted(g) for g in spec.group_by]
    sums = [("__count", "1")]
    for a in spec.aggregates:
        if a.function in ("sum", "mean") and a.column is not None:
            lower, upper = (_number(x) for x in a.bounds)
            sums.append(
                (f"__sum_{a.name}", f"LEAST(GREATEST(r.{_quoted(a.column)}, {lower}), {upper})")
            )
    keys = [f"r.{g} AS {g}" for g in groups]
    by = f" GROUP BY {', '.join(f'r.{g}' for g in groups)}" if groups else ""
    total = [f"COALESCE(SUM({v}), 0) AS {_quoted(n)}" for n, v in sums]
    excess = [f"COALESCE(SUM((1 - h.__cleanroom_keep) * {v}), 0) AS {_quoted(n)}" for n, v in sums]
    weighted = [f"a.{_quoted(n)} - COALESCE(x.{_quoted(n)}, 0) AS {_quoted(n)}" for n, _ in sums]
    same = " AND ".join(f"a.{g} IS NOT DISTINCT FROM x.{g}" for g in groups) or "TRUE"
    # only declared keys: a semi join on their list, after aggregation (a filter on the
    # group key would be pushed below the aggregate and test every row)
    declared = ""
    for i, (g, values) in enumerate(zip(groups, spec.group_by.values(), strict=True)):
        rows = ", ".join(f"({exp.convert(key).sql('duckdb')})" for key in values)
        declared += f" SEMI JOIN (VALUES {rows}) AS d{i}(k) ON a.{g} = d{i}.k"
    # identifiers are quoted and keys rendered as literals by sqlglot; row_sql is checked
    # the row query is read three times: a join is computed once and kept, a plain
    # scan is cheaper to repeat than to keep
    joins = sqlglot.parse_one(row_sql, dialect="duckdb").args.get("joins")
    kept = "MATERIALIZED" if joins else "NOT MATERIALIZED"
    return f"""WITH __cleanroom_rows AS {kept} ({row_sql}),
__cleanroom_heavy AS (SELECT {unit}, {k} / COUNT(*) AS __cleanroom_keep FROM __cleanroom_rows
    GROUP BY {unit} HAVING COUNT(*) > {k}),
__cleanroom_all AS (SELECT {", ".join([*keys, *total])} FROM __cleanroom_rows r{by}),
__cleanroom_excess AS (SELECT {", ".join([*keys, *excess])} FROM __cleanroom_rows r
    JOIN __cleanroom_heavy h ON r.{unit} IS NOT DISTINCT FROM h.{unit}{by})
SELECT {", ".join([*(f"a.{g}" for g in groups), *weighted])}
FROM __cleanroom_all a{declared} LEFT JOIN __cleanroom_excess x ON {same}"""  # noqa: S608


def _measurement(statistic: Statistic) -> Any:
    # counts are weighted (fractional) like sums: both are floats
    domain, metric = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    measurement = dp.m.make_laplace(domain, metric, statistic.scale)
    spent = measurement.map(statistic.sensitivity)  # type: ignore[no-untyped-call]  # no stub
    if spent > statistic.epsilon * (1 + 1e-9):
        raise OperationalError(f"DP calibration failed for {statistic.name}")
    return measurement


def release(exact: pa.Table, spec: DpSpec) -> pa.Table:
    """Noisy aggregates for every declared key combination, from the exact ones."""
    statistics = {s.name: s for s in plan(spec)}
    groups = list(spec.group_by)
    rows = {tuple(r[g] for g in groups): r for r in exact.to_pylist()}
    noise = {name: _measurement(s) for name, s in statistics.items()}
    out: dict[str, list[Any]] = {g: [] for g in groups} | {a.name: [] for a in spec.aggregates}
    for key in itertools.product(*spec.group_by.values()) if groups else [()]:
        row = rows.get(tuple(key), {})
        noisy: dict[str, float] = {}
        for name in statistics:
            noisy[name] = noise[name](float(row.get(name) or 0))
        for g, k in zip(groups, key, strict=True):
            out[g].append(k)
        for a in spec.aggregates:
            if a.function == "count":
                out[a.name].append(max(0, round(noisy["__count"])))
            elif a.function == "sum":
                out[a.name].append(noisy[f"__sum_{a.name}"])
            else:
                mean = noisy[f"__sum_{a.name}"] / max(noisy["__count"], 1)
                lower, upper = a.bounds
                out[a.name].append(min(max(mean, lower), upper))
    return pa.table(out)
