"""Convert a vendor's trained model to ONNX (the vendor's side; the ``[ml]`` extra).

ONNX is the only model format the enclave executes: a graph of standard
operators that onnxruntime interprets, with no code of the vendor's inside.
:func:`to_onnx` converts scikit-learn estimators and pipelines (with skl2onnx),
LightGBM and XGBoost classifiers and regressors (with onnxmltools), then
normalises the result so every model looks alike to the enclave:

* one float input named ``features``, of shape ``[batch, len(features)]``;
* classifier outputs named ``label`` and ``probabilities`` (a plain tensor,
  never ZipMap's sequence of maps), every batch dimension named ``batch``;
* each op domain imported once.

A model fitted on a data frame knows its columns: ``features`` must name
them in the same order, since the enclave feeds the model one matrix built
from the columns the manifest names.

It then runs the enclave's own checks (:func:`cleanroom.models.onnx.describe`),
so a model that converts here also loads there. :func:`check_conversion`
compares the ONNX model's predictions with the native model's.

The model object is only read, never serialised: nothing here pickles or
writes a file. The converters are imported on first use; without them,
:class:`MissingExtraError` names the extra to install.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cleanroom.errors import ConversionError, MissingExtraError
from cleanroom.models.manifest import ModelDescription
from cleanroom.models.onnx import describe, session_options

ML_EXTRA = "pip install 'confidential-cleanroom[ml]'"

if TYPE_CHECKING:
    import numpy.typing as npt

INPUT_NAME = "features"
BATCH = "batch"
# skl2onnx 1.20 is tested up to opset 22 (its ai.onnx.ml follows); onnxmltools 1.16's
# LightGBM and XGBoost converters stop at 15. Fixed, so a model converts the same way
# on every machine with the pinned versions.
SKLEARN_OPSET = 17
GBM_OPSET = 15
_OUTPUT_NAMES = {"output_label": "label", "output_probability": "probabilities"}


def import_ml(module: str) -> Any:
    """``module``, or :class:`MissingExtraError` naming the ``[ml]`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"converting models needs {module.partition('.')[0]}: {ML_EXTRA}"
        ) from exc


def _library(model: object) -> str:
    return type(model).__module__.partition(".")[0]


def _final_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if isinstance(steps, list) and steps else model


def _is_classifier(model: Any) -> bool:
    final = _final_step(model)
    return hasattr(final, "classes_") and hasattr(final, "predict_proba")


@contextmanager
def _xgboost_unnamed(model: Any) -> Iterator[None]:
    """onnxmltools 1.16 reads XGBoost features only as f0, f1, ...: a model fitted on
    a data frame has its column names, which :func:`to_onnx` has already checked
    against ``features``. Hide them for the conversion, then put them back."""
    booster = model.get_booster()
    names = booster.feature_names
    booster.feature_names = None
    try:
        yield
    finally:
        booster.feature_names = names


def _convert(model: Any, width: int) -> Any:
    library = _library(model)
    if library in {"lightgbm", "xgboost"}:
        onnxmltools = import_ml("onnxmltools")
        types = import_ml("onnxmltools.convert.common.data_types")
        initial = [(INPUT_NAME, types.FloatTensorType([None, width]))]
        if library == "lightgbm":
            return onnxmltools.convert_lightgbm(
                model, initial_types=initial, target_opset=GBM_OPSET, zipmap=False
            )
        with _xgboost_unnamed(model):
            return onnxmltools.convert_xgboost(model, initial_types=initial, target_opset=GBM_OPSET)
    if library == "sklearn":
        skl2onnx = import_ml("skl2onnx")
        types = import_ml("skl2onnx.common.data_types")
        return skl2onnx.convert_sklearn(
            model,
            initial_types=[(INPUT_NAME, types.FloatTensorType([None, width]))],
            target_opset=SKLEARN_OPSET,
            options={"zipmap": False} if _is_classifier(model) else None,
        )
    raise ConversionError(
        f"cannot convert a {type(model).__name__}: only scikit-learn, LightGBM and "
        "XGBoost models convert to ONNX here"
    )


def _normalise(model: Any) -> None:
    """Rename outputs, name batch dimensions, import each op domain once (in place)."""
    graph = model.graph
    renames = {o.name: _OUTPUT_NAMES.get(o.name, o.name) for o in graph.output}
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = renames.get(name, name)
    for info in (*graph.output, *graph.value_info):
        info.name = renames.get(info.name, info.name)
    for info in (*graph.input, *graph.output):
        dims = info.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = BATCH
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), int(opset.version))
    del model.opset_import[:]
    for domain, version in sorted(versions.items()):
        model.opset_import.add(domain=domain, version=version)


def to_onnx(model: Any, *, features: Sequence[str]) -> bytes:
    """The ONNX bytes of a fitted ``model`` that takes the columns ``features``, in order.

    Raises :class:`ConversionError` when the converter cannot handle the model
    (see docs/models.md for what converts with the pinned versions), and
    :class:`ModelRefusedError` if the result would not load in the enclave.
    """
    names = list(features)
    if not names or len(set(names)) != len(names):
        raise ValueError("features must name each input column once, and at least one")
    width = getattr(model, "n_features_in_", len(names))
    if width != len(names):
        raise ValueError(f"the model takes {width} features, {len(names)} columns were named")
    fitted = getattr(model, "feature_names_in_", None)  # set when fitted on a data frame
    if fitted is not None and [str(n) for n in fitted] != names:
        # the input is one matrix: a different order would silently feed the wrong columns
        raise ValueError("features must name the columns the model was fitted on, in that order")
    try:
        converted = _convert(model, len(names))
    except (ConversionError, MissingExtraError):
        raise
    except Exception as exc:  # every converter raises its own zoo of types
        # their messages can quote attribute arrays, i.e. weights: keep them on the cause
        raise ConversionError(
            f"{type(model).__name__} does not convert to ONNX with the installed converters"
        ) from exc
    _normalise(converted)
    model_bytes: bytes = converted.SerializeToString()
    describe(model_bytes)  # the enclave's checks, here, before anything is signed
    return model_bytes


def check_conversion(
    model: Any,
    model_bytes: bytes,
    sample: npt.ArrayLike,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> ModelDescription:
    """Raise :class:`ConversionError` unless the ONNX model predicts like ``model``.

    On ``sample`` (rows of feature values), labels must be equal and
    probabilities (or regression values) close. Returns the model's description.
    """
    np = import_ml("numpy")
    description = describe(model_bytes)
    ort = import_ml("onnxruntime")
    session = ort.InferenceSession(
        bytes(model_bytes), session_options(threads=1), providers=["CPUExecutionProvider"]
    )
    rows = np.ascontiguousarray(sample, dtype=np.float32)
    outputs = [o.name for o in description.outputs]
    results = dict(zip(outputs, session.run(outputs, {INPUT_NAME: rows}), strict=True))
    with warnings.catch_warnings():
        # a model fitted on a data frame warns on a bare matrix; to_onnx checked the order
        warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
        native = model.predict(rows)
        native_probabilities = model.predict_proba(rows) if _is_classifier(model) else None
    if _is_classifier(model):
        if not np.array_equal(np.ravel(results["label"]), np.ravel(native)):
            raise ConversionError("the ONNX model's labels differ from the native model's")
        if not np.allclose(results["probabilities"], native_probabilities, atol=atol, rtol=rtol):
            raise ConversionError("the ONNX model's probabilities differ from the native model's")
    elif "variable" in results:
        if not np.allclose(np.ravel(results["variable"]), np.ravel(native), atol=atol, rtol=rtol):
            raise ConversionError("the ONNX model's predictions differ from the native model's")
    else:
        raise ConversionError("check_conversion knows classifiers and regressors only")
    return description
