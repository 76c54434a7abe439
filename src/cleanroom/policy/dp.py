"""Differentially private release inside the enclave, with OpenDP's Laplace noise.

Given the checked row query of a DP analysis (one row per contribution: the
privacy unit, the declared group keys, the values) and its specification:

1. contribution bounding: each unit keeps at most ``max_contributions`` rows,
   chosen at random inside the enclave, so one person moves any count by at
   most k and any clamped sum by at most k * max(|lower|, |upper|);
2. exact aggregates per declared group key, values clamped to their bounds;
   rows whose key was not declared are dropped and every declared key is
   reported (an absent group is a count of 0, so the key set reveals nothing);
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
from typing import Any

import opendp.prelude as dp
import pyarrow as pa
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


def aggregate_sql(row_sql: str, spec: DpSpec) -> str:
    """The SQL the enclave runs: bounded contributions, exact clamped aggregates."""
    unit = _quoted(spec.unit)
    groups = [_quoted(g) for g in spec.group_by]
    columns = [f"COUNT(*) AS {_quoted('__count')}"]
    for a in spec.aggregates:
        if a.function in ("sum", "mean") and a.column is not None:
            lower, upper = a.bounds
            value = _quoted(a.column)
            clamped = f"LEAST(GREATEST(CAST({value} AS DOUBLE), {lower!r}), {upper!r})"
            name = _quoted(f"__sum_{a.name}")
            columns.append(f"COALESCE(SUM({clamped}), 0) AS {name}")
    filters = [
        f"{g} IN ({', '.join(exp.convert(k).sql('duckdb') for k in keys)})"
        for g, keys in zip(groups, spec.group_by.values(), strict=True)
    ]
    # identifiers are quoted and keys rendered as literals by sqlglot; row_sql is checked
    return (
        f"WITH cleanroom_rows AS ({row_sql}), cleanroom_bounded AS ("  # noqa: S608
        f"SELECT * FROM cleanroom_rows QUALIFY row_number() OVER "
        f"(PARTITION BY {unit} ORDER BY random()) <= {int(spec.max_contributions)}) "
        f"SELECT {', '.join([*groups, *columns])} FROM cleanroom_bounded"
        + (f" WHERE {' AND '.join(filters)}" if filters else "")
        + (f" GROUP BY {', '.join(groups)}" if groups else "")
    )


def _measurement(statistic: Statistic, integer: bool) -> Any:
    d_in: int | float
    if integer:
        domain, metric = dp.atom_domain(T=int), dp.absolute_distance(T=int)
        d_in = int(statistic.sensitivity)
    else:
        domain, metric = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
        d_in = statistic.sensitivity
    measurement = dp.m.make_laplace(domain, metric, statistic.scale)
    spent = measurement.map(d_in)  # type: ignore[no-untyped-call]  # OpenDP has no stub here
    if spent > statistic.epsilon * (1 + 1e-9):
        raise OperationalError(f"DP calibration failed for {statistic.name}")
    return measurement


def release(exact: pa.Table, spec: DpSpec) -> pa.Table:
    """Noisy aggregates for every declared key combination, from the exact ones."""
    statistics = {s.name: s for s in plan(spec)}
    groups = list(spec.group_by)
    rows = {tuple(r[g] for g in groups): r for r in exact.to_pylist()}
    noise = {name: _measurement(s, integer=name == "__count") for name, s in statistics.items()}
    out: dict[str, list[Any]] = {g: [] for g in groups} | {a.name: [] for a in spec.aggregates}
    for key in itertools.product(*spec.group_by.values()) if groups else [()]:
        row = rows.get(tuple(key), {})
        noisy: dict[str, float] = {}
        for name in statistics:
            value = row.get(name) or 0
            noisy[name] = noise[name](int(value) if name == "__count" else float(value))
        for g, k in zip(groups, key, strict=True):
            out[g].append(k)
        for a in spec.aggregates:
            if a.function == "count":
                out[a.name].append(max(0, int(noisy["__count"])))
            elif a.function == "sum":
                out[a.name].append(noisy[f"__sum_{a.name}"])
            else:
                mean = noisy[f"__sum_{a.name}"] / max(noisy["__count"], 1)
                lower, upper = a.bounds
                out[a.name].append(min(max(mean, lower), upper))
    return pa.table(out)
