"""Analysis rules: what a data owner lets leave the enclave from its dataset.

Three kinds, after the vocabulary of AWS Clean Rooms:

- ``aggregation``: only aggregates leave. The rule lists which aggregate
  functions may run on which columns, the dimension columns (usable in
  SELECT, WHERE, GROUP BY, ORDER BY), the join columns (only in join
  conditions, never output, never compared with literals), the scalar
  functions allowed on dimensions, and the minimum number of distinct
  identities (the schema's identity column) behind every output row, with
  optional per-column overrides. Rows under the minimum are suppressed.
- ``list``: row-level overlap, limited to the declared list columns, joined
  only on the declared join columns.
- ``custom``: only analyses whose exact SQL the owner approved (by voting for
  it), optionally with a threshold and columns that may never be output.

Every rule may also restrict who can receive results (``recipients``). When
several datasets meet in one query the strictest wins: the highest threshold,
the union of disallowed columns, the intersection of recipients.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from cleanroom.datasets.schema import Schema
from cleanroom.errors import GovernanceError
from cleanroom.wire import WireModel

Column = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
AggregateName = Literal["count", "count_distinct", "sum", "avg", "min", "max"]

# Scalar functions a rule may allow on dimension columns. Functions that encode
# or reveal values (hashes, substrings, JSON, string splitting...) are not in
# this catalogue, so no rule can allow them.
MAX_DP_GROUPS = 100_000
SCALAR_FUNCTIONS = frozenset(
    {
        "abs",
        "ceil",
        "date_trunc",
        "extract",
        "floor",
        "greatest",
        "least",
        "lower",
        "month",
        "round",
        "upper",
        "year",
    }
)


class AggregateAllowance(WireModel):
    function: AggregateName
    columns: list[Column] = Field(min_length=1, max_length=1024)


class AggregationRule(WireModel):
    type: Literal["aggregation"]
    aggregates: list[AggregateAllowance] = Field(default_factory=list, max_length=16)
    dimensions: list[Column] = Field(default_factory=list, max_length=1024)
    join_columns: list[Column] = Field(default_factory=list, max_length=64)
    scalar_functions: list[StrictStr] = Field(default_factory=list, max_length=64)
    min_distinct: StrictInt = Field(ge=1, le=1_000_000)
    column_thresholds: dict[Column, StrictInt] = Field(default_factory=dict, max_length=1024)
    recipients: list[Fingerprint] | None = Field(default=None, max_length=200)

    def allows(self, function: str, column: str) -> bool:
        return any(a.function == function and column in a.columns for a in self.aggregates)


class ListRule(WireModel):
    type: Literal["list"]
    list_columns: list[Column] = Field(min_length=1, max_length=1024)
    join_columns: list[Column] = Field(default_factory=list, max_length=64)
    scalar_functions: list[StrictStr] = Field(default_factory=list, max_length=64)
    recipients: list[Fingerprint] | None = Field(default=None, max_length=200)


class CustomRule(WireModel):
    type: Literal["custom"]
    min_distinct: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    disallowed_columns: list[Column] = Field(default_factory=list, max_length=1024)
    recipients: list[Fingerprint] | None = Field(default=None, max_length=200)


Rule = Annotated[AggregationRule | ListRule | CustomRule, Field(discriminator="type")]


def check_rule(rule: AggregationRule | ListRule | CustomRule, schema: Schema) -> None:
    """Refuse a rule that names unknown columns or allows what no rule may."""
    names = set(schema.names)
    identity = schema.identity_column

    def known(columns: list[str], what: str) -> None:
        for column in columns:
            if column not in names:
                raise GovernanceError(f"the rule's {what} names {column!r}, not in the schema")

    if isinstance(rule, CustomRule):
        known(rule.disallowed_columns, "disallowed columns")
        return
    known(rule.join_columns, "join columns")
    for function in rule.scalar_functions:
        if function not in SCALAR_FUNCTIONS:
            raise GovernanceError(
                f"scalar function {function!r} cannot be allowed; choose from "
                f"{', '.join(sorted(SCALAR_FUNCTIONS))}"
            )
    if isinstance(rule, ListRule):
        known(rule.list_columns, "list columns")
        overlap = set(rule.list_columns) & set(rule.join_columns)
        if overlap:
            raise GovernanceError(f"join columns are never output: {sorted(overlap)} are both")
        return
    known(rule.dimensions, "dimensions")
    known(list(rule.column_thresholds), "column thresholds")
    for allowance in rule.aggregates:
        known(allowance.columns, f"{allowance.function} columns")
        if identity in allowance.columns and allowance.function != "count_distinct":
            raise GovernanceError(
                f"{allowance.function} on the identity column {identity!r} would reveal "
                "identities; only count_distinct is allowed on it"
            )
    if identity in rule.dimensions:
        raise GovernanceError(f"the identity column {identity!r} cannot be a dimension")
    both = set(rule.dimensions) & set(rule.join_columns)
    if both:
        raise GovernanceError(f"join columns are never output: {sorted(both)} are dimensions")


# -- differential privacy ---------------------------------------------------------------

Key = Annotated[StrictStr, Field(max_length=256)] | StrictInt | StrictBool


class DpAggregate(WireModel):
    name: Column
    function: Literal["count", "sum", "mean"]
    column: Column | None = None
    lower: StrictFloat | StrictInt | None = None
    upper: StrictFloat | StrictInt | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        """The clamping bounds of a sum or mean."""
        if self.lower is None or self.upper is None:
            raise ValueError(f"{self.name}: a DP count has no bounds")
        return float(self.lower), float(self.upper)

    @model_validator(mode="after")
    def _bounds(self) -> DpAggregate:
        if self.function == "count":
            if self.column is not None or self.lower is not None or self.upper is not None:
                raise ValueError(f"{self.name}: a DP count takes no column or bounds")
        elif self.column is None or self.lower is None or self.upper is None:
            raise ValueError(
                f"{self.name}: a DP {self.function} needs a column and clamping bounds"
            )
        elif self.lower >= self.upper:
            raise ValueError(f"{self.name}: lower bound must be below upper bound")
        return self


class DpSpec(WireModel):
    """A differentially private release: the SQL selects one row per contribution
    (the privacy unit, group keys, values); the enclave bounds each unit's rows,
    clamps values and adds Laplace noise calibrated to ``epsilon``."""

    epsilon: StrictFloat | StrictInt = Field(gt=0, le=10)
    delta: StrictFloat | StrictInt = Field(default=0.0, ge=0, le=0)  # pure DP (Laplace)
    unit: Column
    max_contributions: StrictInt = Field(default=1, ge=1, le=1000)
    group_by: dict[Column, list[Key]] = Field(default_factory=dict, max_length=4)
    aggregates: list[DpAggregate] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _keys(self) -> DpSpec:
        for column, keys in self.group_by.items():
            if not keys or len(keys) > 10_000 or len(set(keys)) != len(keys):
                raise ValueError(f"group {column}: declare 1 to 10,000 distinct public keys")
        # every combination of keys is released, noisy, even when empty
        if math.prod(len(keys) for keys in self.group_by.values()) > MAX_DP_GROUPS:
            raise ValueError(
                f"the declared keys make more than {MAX_DP_GROUPS:,} groups (every combination "
                "is released): declare fewer keys or fewer group columns"
            )
        names = [a.name.lower() for a in self.aggregates]
        groups = [g.lower() for g in self.group_by]
        if (
            len(set(names)) != len(names)
            or len(set(groups)) != len(groups)
            or set(names) & set(groups)
        ):
            raise ValueError("DP output names must be distinct (without regard to case)")
        if self.unit.lower() in groups:
            raise ValueError(
                f"the privacy unit {self.unit!r} cannot be a group key: each person's group "
                "would be released"
            )
        for aggregate in self.aggregates:
            column = (aggregate.column or "").lower()
            if column == self.unit.lower() or column in groups:
                raise ValueError(
                    f"{aggregate.name}: the privacy unit and group keys cannot be aggregated"
                )
        for name in [self.unit, *groups, *names]:
            if reserved_name(name):
                raise ValueError(f"{name!r} is a name the DP mechanism reserves")
        return self


def reserved_name(name: str) -> bool:
    """Names the enclave's own SQL uses (``__cleanroom_...``, ``cleanroom_...``): an
    analysis may not take them for its outputs."""
    lowered = name.lower()
    return lowered.startswith(("__", "cleanroom_"))
