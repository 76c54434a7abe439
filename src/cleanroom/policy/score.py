"""The static check of a scoring analysis (pure): a protected model scores
protected records inside the enclave (ADR 0023).

A scoring analysis's text is one JSON object, in its RFC 8785 canonical form
(so the bytes the owners approve by digest have exactly one reading)::

    {"id":"patient_id","keep":{"equals":1,"output":"label"},"model":"triage",
     "model_digest":"5f2c...","outputs":[],"records":"patients"}

``model`` and ``records`` name the analysis's two inputs; ``model_digest`` pins
the exact model (the SHA-256 of its signed model manifest: the bytes' digest,
its features, its outputs), so a new version of the model never runs under an
approval given to the old one. The model's manifest names its feature columns,
which the records must have. The result
holds the ``id`` column and the declared model ``outputs``, one row per record
(or, with ``keep``, only the rows whose 1-D integer or boolean output equals
the given value: a candidate list). It never holds a feature, and never the
model: the model is an input that only the enclave's scoring reads.

Refused, each with its reason:

- a text that is not the canonical JSON of a well-formed spec;
- a model that is not the version the analysis pins;
- inputs other than exactly one model asset and one dataset of records;
- a model whose owner has not approved this exact analysis (its release
  policy: the vendor decides, analysis by analysis, what its model scores and
  which outputs leave; raw scores ease model extraction);
- records whose owner has not approved this exact analysis, or whose rule
  releases only aggregates or overlaps (scoring releases a row per record: only
  a custom rule, or no rule, with the owner's approval allows it; a custom rule
  with a threshold allows only grouped output);
- an id column that is missing or never output; a feature that is missing,
  not numeric or boolean, the records' identity column, the id column, or a
  column never output (a feature's value would leave through the score);
- outputs the model does not have, repeated, named like the id column, not
  one value per record (a fixed first dimension, or not 1-D or 2-D), or of a
  type no column holds; a ``keep`` on an output that is not a 1-D integer or
  boolean tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, StrictBool, StrictInt, StrictStr

from cleanroom.errors import PolicyError
from cleanroom.models.manifest import ModelManifest, TensorSpec
from cleanroom.policy.canonical import CanonicalText, fail_closed, parse_canonical
from cleanroom.policy.rules import AggregationRule, Column, CustomRule, ListRule
from cleanroom.wire import WireModel

if TYPE_CHECKING:
    from cleanroom.policy.check import Source

LANGUAGE = "score"
NUMERIC = ("boolean", "int32", "int64", "float64")
KEEP_TYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
)
# the element types cleanroom.models.score turns into columns
COLUMN_TYPES = KEEP_TYPES | {"float", "double", "string"}
MAX_OUTPUTS = 16

InputName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")]
OutputName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class Keep(WireModel):
    output: OutputName
    equals: StrictInt | StrictBool


class ScoreSpec(CanonicalText):
    model: InputName
    model_digest: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    records: InputName
    id: Column
    outputs: list[OutputName] = Field(default_factory=list, max_length=MAX_OUTPUTS)
    keep: Keep | None = None


@dataclass(frozen=True)
class ScorePlan:
    """A checked scoring analysis: what the enclave runs."""

    spec: ScoreSpec
    model: ModelManifest
    features: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [self.spec.id, *self.spec.outputs]


def parse_spec(text: str) -> ScoreSpec:
    """The spec of a scoring analysis; refuses any text but its canonical form."""
    return parse_canonical(ScoreSpec, text, what="scoring analysis")


def check_score(text: str, sources: dict[str, Source]) -> ScorePlan:
    """Check a scoring analysis against its two inputs; any failure is a refusal."""
    with fail_closed():
        return _check(text, sources)


def _check(text: str, sources: dict[str, Source]) -> ScorePlan:
    spec = parse_spec(text)
    if spec.model == spec.records or set(sources) != {spec.model, spec.records}:
        raise PolicyError(
            "a scoring analysis has exactly two inputs: its model and its records, "
            f"here {spec.model!r} and {spec.records!r}"
        )
    model_source, records = sources[spec.model], sources[spec.records]
    model = model_source.model
    if model is None:
        raise PolicyError(f"{spec.model!r} is not a model")
    if records.model is not None:
        raise PolicyError(f"{spec.records!r} is a model, not records")
    if model.digest() != spec.model_digest:
        raise PolicyError(
            f"the model {spec.model!r} in the room is not the version this analysis pins: "
            "a new version needs a new approval"
        )
    if not model_source.owner_approved:
        raise PolicyError(f"the owner of the model {spec.model!r} has not approved this analysis")
    disallowed = _check_records(records)
    schema = records.schema
    if spec.id not in schema.names:
        raise PolicyError(f"{spec.records!r} has no column {spec.id!r}")
    if spec.id.lower() in disallowed:
        raise PolicyError(f"the rule of {spec.records!r} never lets {spec.id!r} be output")
    if not model.features:
        raise PolicyError(f"the model {spec.model!r} names no feature columns to score from")
    for feature in model.features:
        _check_feature(feature, spec, records, disallowed)
    _check_outputs(spec, model)
    return ScorePlan(spec, model, model.features)


def _check_records(records: Source) -> frozenset[str]:
    """The records' rule admits one row per record; returns its never-output columns,
    lower-cased (column names compare without regard to case, as SQL resolves them)."""
    rule = records.rule
    if isinstance(rule, (AggregationRule, ListRule)):
        raise PolicyError(
            f"the {rule.type} rule of {records.name!r} releases no scores: scoring releases a "
            "row per record, which only a custom rule approving this analysis allows"
        )
    if rule is not None and not isinstance(rule, CustomRule):  # a rule type added later
        raise PolicyError(f"the rule of {records.name!r} is not one scoring understands")
    if not records.owner_approved:  # no rule: like a custom rule, only what its owner approved
        raise PolicyError(f"the owner of {records.name!r} has not approved this analysis")
    if rule is None:
        return frozenset()
    if rule.min_distinct is not None and rule.min_distinct > 1:
        raise PolicyError(
            f"the custom rule of {records.name!r} has a threshold of {rule.min_distinct}: "
            "it allows only grouped output, and scoring releases a row per record"
        )
    return frozenset(c.lower() for c in rule.disallowed_columns)  # names compare as in SQL


def _check_feature(
    feature: str, spec: ScoreSpec, records: Source, disallowed: frozenset[str]
) -> None:
    schema = records.schema
    if feature not in schema.names:
        raise PolicyError(f"the model's feature {feature!r} is not a column of {spec.records!r}")
    kind = schema.column(feature).type
    if kind not in NUMERIC and not kind.startswith("decimal("):
        raise PolicyError(f"the model's feature {feature!r} is {kind}: a model takes numbers")
    if feature.lower() == schema.identity_column.lower():
        raise PolicyError(f"the identity column {feature!r} cannot be a model's feature")
    if feature.lower() == spec.id.lower():
        raise PolicyError(f"the id column {spec.id!r} cannot also be a model's feature")
    if feature.lower() in disallowed:
        raise PolicyError(
            f"the rule of {spec.records!r} never lets {feature!r} be output, "
            "and a feature leaves through the score"
        )


def _check_outputs(spec: ScoreSpec, model: ModelManifest) -> None:
    names = {t.name for t in model.model.outputs}
    if len(set(spec.outputs)) != len(spec.outputs):
        raise PolicyError("a scoring analysis names each output once")
    for output in spec.outputs:
        if output not in names:
            raise PolicyError(f"the model has no output {output!r}")
        if output.lower() == spec.id.lower():
            raise PolicyError(f"output {output!r} would take the id column's name")
        _check_per_record(model.model.output(output))
    keep = spec.keep
    if keep is not None:
        if keep.output not in names:
            raise PolicyError(f"the model has no output {keep.output!r} to keep rows by")
        tensor = model.model.output(keep.output)
        _check_per_record(tensor)
        if len(tensor.shape) != 1 or tensor.element_type not in KEEP_TYPES:
            raise PolicyError(
                f"rows are kept by a 1-D integer or boolean output; {tensor.describe()} is not"
            )
        _check_keep_value(keep.equals, tensor)


def _check_per_record(tensor: TensorSpec) -> None:
    """An output becomes a column: one value (or one fixed-width row) per record, of a
    type a column holds. A fixed first dimension is not per record (a model that sums
    over the records would carry an aggregate of them out); the enclave checks the
    rows it gets again, whatever the manifest says."""
    if len(tensor.shape) not in (1, 2) or tensor.element_type not in COLUMN_TYPES:
        raise PolicyError(
            f"output {tensor.describe()} cannot become a column: it must be a 1-D or 2-D "
            "tensor of a numeric, boolean or string type"
        )
    if isinstance(tensor.shape[0], int):
        raise PolicyError(f"output {tensor.describe()} is not one value per record")


_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}


def _check_keep_value(value: int | bool, tensor: TensorSpec) -> None:
    """``keep``'s value is one the output can hold: a boolean for a boolean output, an
    integer in range for an integer one (never a failure, or a silent cast, later)."""
    kind = tensor.element_type
    if kind == "bool" or isinstance(value, bool):
        if kind != "bool" or not isinstance(value, bool):
            raise PolicyError(f"keep compares {tensor.describe()} with {value!r}: not its type")
        return
    signed = kind in _BITS
    bits = _BITS.get(kind) or _BITS["int" + kind.removeprefix("uint")]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= value <= high:
        raise PolicyError(f"keep's value {value} is out of the range of {tensor.describe()}")
