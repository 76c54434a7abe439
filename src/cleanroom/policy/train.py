"""The static check of a training analysis (pure): a model trained inside the
enclave on rows no party sees (ADR 0023).

A training analysis's text is one JSON object, in its RFC 8785 canonical form::

    {"algorithm":"gradient_boosting","deliver":"model",
     "features":["age","hba1c","egfr"],"holdout":0.2,"label":"responded",
     "model":"response","params":{"learning_rate":0.1,"n_estimators":200},
     "seed":7,"training":"SELECT age, hba1c, egfr, responded FROM trial ORDER BY id"}

``training`` is SQL over the analysis's inputs that defines the training set,
one row per example; ``label`` (integer or boolean classes) and ``features``
(numbers) are columns of it. The enclave runs the SQL, holds out a seeded
``holdout`` share of the rows, fits ``algorithm`` with ``params`` on the rest,
converts the fitted model to ONNX there, and evaluates the ONNX model on the
held-out rows. The result is one row: the model's name, its ONNX bytes (with
``deliver`` ``"model"``; ``"metrics"`` releases only the evaluation) and the
evaluation (rows trained on and held out, accuracy, log loss, ROC AUC for two
classes). The recipients publish the bytes as a new model asset of theirs
(:meth:`cleanroom.client.Room.publish_model`); nothing of it stays in the room.

A fitted model is a function of its training rows (a tree's split thresholds
are feature values; a small leaf describes a few people), so training reads
only inputs whose owners approve this exact analysis, as a Python analysis
does. Refused, each with its reason:

- a text that is not the canonical JSON of a well-formed spec: an unknown
  algorithm, a parameter the algorithm does not take or out of its range, a
  holdout outside (0, 0.5], the label among the features, a feature twice;
- a model among the inputs (a model is read only by a scoring analysis);
- an input whose owner did not approve this exact analysis, whose rule is an
  aggregation or list rule, or whose custom rule has a threshold above one
  (the enclave cannot count the people behind a fitted model's parts);
- training SQL the room's SQL check refuses (one SELECT over the inputs, no
  table functions, no column an input's rule never lets out in its output);
- a label or feature that is not a column of the training set (without regard
  to case, as SQL resolves names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, StrictFloat, StrictInt, StrictStr, model_validator

from cleanroom.errors import PolicyError
from cleanroom.policy.canonical import CanonicalText, fail_closed, parse_canonical
from cleanroom.policy.python import check_approved_input
from cleanroom.policy.rules import Column, CustomRule
from cleanroom.wire import parse_model

if TYPE_CHECKING:
    from cleanroom.policy.check import Source

LANGUAGE = "train"
MAX_FEATURES = 256
MAX_SQL_CHARS = 16_384  # the SQL check's own bound (policy.grammar.MAX_SQL_CHARS)
Algorithm = Literal["logistic_regression", "gradient_boosting"]
ModelName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]

# Each algorithm's parameters: an allow-list with ranges, so every spec the room
# approves fits in bounded time and memory; anything else keeps the library's default
# or the fixed choice in cleanroom.models.train.
INT_PARAMS: dict[Algorithm, dict[str, tuple[int, int]]] = {
    "logistic_regression": {"max_iter": (1, 10_000)},
    "gradient_boosting": {
        "n_estimators": (1, 2_000),
        "max_depth": (-1, 32),  # -1: no limit but num_leaves
        "num_leaves": (2, 1_024),
        "min_child_samples": (1, 1_000_000),
    },
}
FLOAT_PARAMS: dict[Algorithm, dict[str, tuple[float, float]]] = {
    "logistic_regression": {"C": (1e-6, 1e6)},
    "gradient_boosting": {"learning_rate": (1e-4, 1.0)},
}


class TrainSpec(CanonicalText):
    algorithm: Algorithm
    training: StrictStr = Field(min_length=1, max_length=MAX_SQL_CHARS)
    label: Column
    features: list[Column] = Field(min_length=1, max_length=MAX_FEATURES)
    model: ModelName
    params: dict[StrictStr, StrictInt | StrictFloat] = Field(default_factory=dict)
    seed: StrictInt = Field(default=0, ge=0, le=2**31 - 1)
    holdout: StrictFloat = Field(default=0.2, gt=0.0, le=0.5)
    deliver: Literal["model", "metrics"] = "model"

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        lowered = [f.lower() for f in self.features]
        if len(set(lowered)) != len(lowered):
            raise ValueError("each feature is named once")
        if self.label.lower() in lowered:
            raise ValueError(f"the label {self.label!r} cannot also be a feature")
        ints, floats = INT_PARAMS[self.algorithm], FLOAT_PARAMS[self.algorithm]
        for name, value in self.params.items():
            bounds: tuple[float, float]
            if name in ints and isinstance(value, int):
                bounds = ints[name]
            elif name in floats:  # RFC 8785 writes 1.0 as 1: an integer is a float here
                bounds = floats[name]
            else:
                known = ", ".join(sorted([*ints, *floats]))
                raise ValueError(
                    f"{self.algorithm} takes no parameter {name!r} of that type (it takes {known})"
                )
            low, high = bounds
            if not low <= value <= high:
                raise ValueError(f"parameter {name!r} must be within [{low:g}, {high:g}]")
        return self


@dataclass(frozen=True)
class TrainPlan:
    """A checked training analysis: what the enclave runs."""

    spec: TrainSpec
    training_sql: str


def training_spec(
    *,
    training_sql: str,
    label: str,
    features: Sequence[str],
    model: str,
    algorithm: str = "gradient_boosting",
    params: Mapping[str, int | float] | None = None,
    seed: int = 0,
    holdout: float = 0.2,
    deliver: str = "model",
) -> TrainSpec:
    """A spec from its parts; a clear error naming the part that is wrong."""
    terms = {
        "algorithm": algorithm,
        "training": training_sql,
        "label": label,
        "features": list(features),
        "model": model,
        "params": dict(params or {}),
        "seed": seed,
        "holdout": float(holdout),
        "deliver": deliver,
    }
    return parse_model(TrainSpec, terms, what="training analysis")


def parse_spec(text: str) -> TrainSpec:
    """The spec of a training analysis; refuses any text but its canonical form."""
    return parse_canonical(TrainSpec, text, what="training analysis")


def check_train(text: str, sources: dict[str, Source]) -> TrainPlan:
    """Check a training analysis against its inputs; any failure is a refusal."""
    with fail_closed():
        return _check(text, sources)


def _check(text: str, sources: dict[str, Source]) -> TrainPlan:
    from cleanroom.policy.check import check_query  # noqa: PLC0415 - sqlglot

    spec = parse_spec(text)
    if not sources:
        raise PolicyError("a training analysis reads at least one input")
    never: set[str] = set()
    for source in sources.values():
        never |= check_approved_input(source, "a training analysis")
    # the room's SQL check: one SELECT over the inputs, no never-output column out. A
    # custom rule's threshold is at most one here (checked above): it suppresses nothing
    unthresholded = {
        name: replace(s, rule=s.rule.model_copy(update={"min_distinct": None}))
        if isinstance(s.rule, CustomRule)
        else s
        for name, s in sources.items()
    }
    checked = check_query(spec.training, unthresholded)
    _never_read(checked.sql, sources, never)  # the SQL the enclave will run
    names = [c.lower() for c in checked.columns]
    if len(set(names)) != len(names):
        raise PolicyError("the training set names each column once (AS gives a new name)")
    columns = set(names)
    for column in (spec.label, *spec.features):
        if column.lower() not in columns:
            raise PolicyError(f"{column!r} is not a column of the training set")
    return TrainPlan(spec, checked.sql)


def _never_read(sql: str, sources: dict[str, Source], never: set[str]) -> None:
    """A model is a function of every column its SQL touches, not only of the ones it
    selects: a never-output column used to join, filter, group or order would reach
    the model as surely as one selected (joined to a lookup, it becomes the label).
    So no never-output column's name may appear anywhere in the training SQL, once
    qualified (``*`` and NATURAL joins expanded into the columns they read). Every
    selected expression that is not a plain
    column is named (``AS``): the engine and the check name it differently otherwise."""
    import sqlglot  # noqa: PLC0415
    from sqlglot import exp  # noqa: PLC0415

    from cleanroom.policy.check import DIALECT, qualified  # noqa: PLC0415

    written = sqlglot.parse_one(sql, dialect=DIALECT)  # as written: qualifying names them
    for projection in written.expressions:
        if not isinstance(projection, (exp.Column, exp.Alias, exp.Star)):
            raise PolicyError("name every computed column of the training set (expression AS name)")
    if not never:
        return
    for node in qualified(sql, sources).find_all(exp.Identifier):
        if node.name.lower() in never:
            raise PolicyError(
                f"{node.name!r} is a column an input never lets out: a training analysis may "
                "not read it in any clause (a model carries what its SQL joins, filters or "
                "groups on)"
            )


def to_run(plan: TrainPlan) -> str:
    """The spec the enclave runs: its training SQL as the check returned it."""
    return plan.spec.model_copy(update={"training": plan.training_sql}).text()
