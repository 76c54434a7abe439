"""Training a classifier from a table, converting it to ONNX and evaluating the ONNX
model (the ``[ml]`` extra): the enclave's ``train`` kind, and the same code on
plaintext for a reference run.

:func:`train` is a function of the table and the spec alone:

* the examples are the rows in the table's order; ``holdout`` of them, chosen by
  a permutation seeded with ``seed``, are held out for evaluation;
* features are read as 32-bit floats, the precision the ONNX model takes, so the
  fitted model and its ONNX form see the same numbers (a split threshold between
  two float64 values could otherwise fall on the other side of a float32 one);
* LightGBM runs deterministically (``deterministic``, row-wise histograms,
  ``threads`` fixed), scikit-learn's logistic regression with ``lbfgs``;
* the model converts with :func:`cleanroom.models.convert.to_onnx`, and the
  metrics are computed from the ONNX model's predictions: they describe the
  model that is delivered, not the one that was fitted.

Bad data (a missing label, a missing feature value for a logistic regression,
fewer than two classes, a column that is not numbers) raises
:class:`ValidationError`, whose message stays inside the enclave; only the
failure's category leaves it. Time is bounded by the caller: the enclave runs
:func:`train_arrays` in a child process it kills at the room's time limit.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cleanroom.errors import ValidationError
from cleanroom.models.convert import INPUT_NAME, import_ml, to_onnx
from cleanroom.models.onnx import session_options

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    from cleanroom.policy.train import TrainSpec

MAX_CLASSES = 100
LIBRARIES = {"gradient_boosting": "lightgbm", "logistic_regression": "sklearn.linear_model"}
MIN_ROWS = 2  # in each part: trained on and held out


@dataclass(frozen=True)
class Metrics:
    """How the delivered (ONNX) model does on the held-out rows."""

    train_rows: int
    test_rows: int
    classes: int
    accuracy: float
    log_loss: float
    roc_auc: float | None  # two classes, both among the held-out rows


@dataclass(frozen=True)
class Trained:
    onnx: bytes
    metrics: Metrics
    phases: dict[str, int]  # fit_ms, convert_ms, evaluate_ms: for the operator's log


def result_schema(*, with_model: bool) -> pa.Schema:
    """The one-row result of a training job."""
    import pyarrow as pa  # noqa: PLC0415

    fields = [pa.field("model", pa.string(), nullable=False)]
    if with_model:
        fields.append(pa.field("onnx", pa.binary(), nullable=False))
    fields += [
        pa.field("train_rows", pa.int64(), nullable=False),
        pa.field("test_rows", pa.int64(), nullable=False),
        pa.field("classes", pa.int64(), nullable=False),
        pa.field("accuracy", pa.float64(), nullable=False),
        pa.field("log_loss", pa.float64(), nullable=False),
        pa.field("roc_auc", pa.float64()),
    ]
    return pa.schema(fields)


def result_table(spec: TrainSpec, trained: Trained) -> pa.Table:
    """The result the recipients receive: the model's bytes only with ``deliver`` model."""
    import pyarrow as pa  # noqa: PLC0415

    m = trained.metrics
    row: dict[str, Any] = {"model": spec.model}
    if spec.deliver == "model":
        row["onnx"] = trained.onnx
    row |= {
        "train_rows": m.train_rows,
        "test_rows": m.test_rows,
        "classes": m.classes,
        "accuracy": m.accuracy,
        "log_loss": m.log_loss,
        "roc_auc": m.roc_auc,
    }
    schema = result_schema(with_model=spec.deliver == "model")
    return pa.Table.from_pylist([row], schema=schema)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """The training set's column ``name``, matched without regard to case (as SQL)."""
    found = [c for c in table.column_names if c.lower() == name.lower()]
    if len(found) != 1:
        raise ValidationError(f"the training set has {len(found)} columns named {name!r}")
    return table.column(found[0])


def examples(
    table: pa.Table, spec: TrainSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The feature matrix (float32) and the labels (int64) of the training set."""
    import numpy as np  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415

    label = _column(table, spec.label)
    if not (pa.types.is_integer(label.type) or pa.types.is_boolean(label.type)):
        raise ValidationError(f"the label {spec.label!r} is {label.type}, not classes")
    if label.null_count:
        raise ValidationError(f"the label {spec.label!r} has missing values")
    try:
        y = label.cast(pa.int64()).to_numpy()  # safe: a class beyond int64 is refused
    except pa.ArrowInvalid as exc:
        raise ValidationError(f"a class of {spec.label!r} is out of the int64 range") from exc
    columns = []
    for name in spec.features:
        column = _column(table, name)
        kind = column.type
        if not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_decimal(kind)
        ):
            raise ValidationError(f"the feature {name!r} is {kind}, not a number")
        # unsafe: an integer beyond 2**53 rounds, as it will to float32 anyway
        values = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, quietly: a
            columns.append(values.astype(np.float32))  # warning would name the overflow
    x = np.column_stack(columns) if columns else np.empty((table.num_rows, 0), np.float32)
    if not np.isfinite(x[~np.isnan(x)]).all():
        raise ValidationError("a feature value is infinite or too large for a 32-bit float")
    return np.ascontiguousarray(x), y


def split(rows: int, holdout: float, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Row indices to train on and to hold out: a seeded permutation, each part sorted."""
    import numpy as np  # noqa: PLC0415

    test = max(MIN_ROWS, round(rows * holdout))
    if rows - test < MIN_ROWS:
        raise ValidationError(f"{rows} rows are too few to train on and hold some out")
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[test:]), np.sort(order[:test])


def fit(
    spec: TrainSpec,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    threads: int,
) -> Any:
    """The fitted (native) model."""
    params = dict(spec.params)
    if spec.algorithm == "logistic_regression":
        if _has_nan(x):
            raise ValidationError("a logistic regression needs every feature value")
        warning = import_ml("sklearn.exceptions").ConvergenceWarning
        model = import_ml("sklearn.linear_model").LogisticRegression(
            C=float(params.get("C", 1.0)),
            max_iter=int(params.get("max_iter", 100)),
            random_state=spec.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", warning)  # the metrics tell
            model.fit(x, y)
        return model
    model = import_ml("lightgbm").LGBMClassifier(
        n_estimators=int(params.get("n_estimators", 100)),
        learning_rate=float(params.get("learning_rate", 0.1)),
        max_depth=int(params.get("max_depth", -1)),
        num_leaves=int(params.get("num_leaves", 31)),
        min_child_samples=int(params.get("min_child_samples", 20)),
        random_state=spec.seed,
        n_jobs=threads,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    model.fit(x, y)
    return model


def _has_nan(x: npt.NDArray[np.float32]) -> bool:
    import numpy as np  # noqa: PLC0415

    return bool(np.isnan(x).any())


def evaluate(
    model_bytes: bytes,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    train_rows: int,
    classes: npt.NDArray[np.int64],
    threads: int,
) -> Metrics:
    """The ONNX model's metrics on the held-out rows."""
    import numpy as np  # noqa: PLC0415

    metrics = import_ml("sklearn.metrics")
    session = import_ml("onnxruntime").InferenceSession(
        model_bytes, session_options(threads=threads), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(["label", "probabilities"], {INPUT_NAME: x})
    probabilities = np.asarray(probabilities, dtype=np.float64)  # float32 rows sum to 1 +- ulp
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    # a class only among the held-out rows is one the model gives no probability
    seen = np.union1d(classes, y)
    full = np.zeros((len(y), len(seen)))
    full[:, np.searchsorted(seen, classes)] = probabilities
    auc = None
    if len(classes) == 2 and np.array_equal(np.unique(y), classes):  # both, and no other
        auc = float(metrics.roc_auc_score(y, probabilities[:, 1]))
    return Metrics(
        train_rows=train_rows,
        test_rows=len(y),
        classes=len(classes),
        accuracy=float(np.mean(np.asarray(labels) == y)),
        log_loss=float(metrics.log_loss(y, full, labels=seen)),
        roc_auc=auc,
    )


def train(table: pa.Table, spec: TrainSpec, *, threads: int = 1) -> Trained:
    """Fit, convert and evaluate (see the module's docstring)."""
    x, y = examples(table, spec)
    return train_arrays(x, y, spec, threads=threads)


def train_arrays(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    spec: TrainSpec,
    *,
    threads: int = 1,
) -> Trained:
    """:func:`train` from the examples (:func:`examples`) already read."""
    import numpy as np  # noqa: PLC0415

    fit_rows, test_rows = split(len(y), spec.holdout, spec.seed)
    classes = np.unique(y[fit_rows])
    if len(classes) < 2:  # a classifier needs two
        raise ValidationError("the rows trained on hold fewer than two classes")
    if len(classes) > MAX_CLASSES:
        raise ValidationError(f"the label has more than {MAX_CLASSES} classes")
    import_ml(LIBRARIES[spec.algorithm])  # loaded before the clock: a fit's time is the fit's
    started = time.perf_counter()
    model = fit(spec, x[fit_rows], y[fit_rows], threads=threads)
    fitted = time.perf_counter()
    model_bytes = to_onnx(model, features=spec.features)
    converted = time.perf_counter()
    metrics = evaluate(
        model_bytes,
        x[test_rows],
        y[test_rows],
        train_rows=len(fit_rows),
        classes=classes,
        threads=threads,
    )
    phases = {
        "fit_ms": round((fitted - started) * 1000),
        "convert_ms": round((converted - fitted) * 1000),
        "evaluate_ms": round((time.perf_counter() - converted) * 1000),
    }
    return Trained(model_bytes, metrics, phases)
