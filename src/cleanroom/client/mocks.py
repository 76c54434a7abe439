"""Mock rows of a room's datasets, from their verified schemas and rules alone
(:mod:`cleanroom.datasets.mock`): what an analyst or a model owner develops and
tries an analysis on before proposing it. Never data: a mock reads nothing but
the ledger's schema and rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from cleanroom.datasets.mock import MockSpec
    from cleanroom.governance.model import Dataset
    from cleanroom.governance.state import RoomState
    from cleanroom.policy.rules import AggregationRule, CustomRule, ListRule

PERSONS = 200  # made-up people behind the mocks, at least 10x the strictest threshold


def threshold(rule: AggregationRule | ListRule | CustomRule | None) -> int:
    """The strictest count of people a rule asks of a group (0: none)."""
    if rule is None:
        return 0
    base: int = getattr(rule, "min_distinct", None) or 0
    overrides: dict[str, int] = getattr(rule, "column_thresholds", {}) or {}
    return max([base, *overrides.values()])


def mock_spec(state: RoomState, dataset: Dataset, rows: int | None, seed: int) -> MockSpec:
    """Mock sizes from the room's strictest threshold (so groups can pass it),
    join columns and dimensions from the dataset's own rule."""
    from cleanroom.datasets.mock import MAX_ROWS, MockSpec  # noqa: PLC0415

    strictest = max((threshold(d.rule) for d in state.datasets.values()), default=0)
    persons = max(PERSONS, 10 * strictest)
    rule = dataset.rule
    return MockSpec.of(
        rows=rows if rows is not None else min(MAX_ROWS, max(1000, 5 * persons)),
        persons=persons,
        seed=seed,
        linked=getattr(rule, "join_columns", ()),
        grouped=getattr(rule, "dimensions", ()),
    )


def mock_of(state: RoomState, dataset: Dataset, rows: int | None, seed: int) -> pa.Table:
    """Mock rows of the dataset's current version."""
    from cleanroom.datasets.mock import mock_table  # noqa: PLC0415

    schema = dataset.versions[-1].manifest.schema
    return mock_table(schema, dataset.name, mock_spec(state, dataset, rows, seed))
