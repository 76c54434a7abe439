"""Model assets: manifests, loading ONNX from bytes, conversion, scoring.

Three groups:

* manifests (pure, the core install): canonical signing, tampering, invariants;
* the enclave's loader (onnx + onnxruntime): round trips and attacks on small
  graphs built here with ``onnx.helper``, so every refusal has its own case
  (pickle, joblib, zip, text, truncated, empty, random bytes, a changed digest,
  a signature that differs from the manifest, external data, custom op domains);
* the vendor's conversion (scikit-learn, LightGBM, XGBoost): tiny seeded models
  round-trip through ONNX and predict as the native model does; the model types
  that do not convert with the pinned versions are pinned here as in
  docs/models.md.

Hostile "pickle" and "joblib" inputs are literal bytes (a pickle of the int 1,
and that pickle zlib-compressed as joblib's ``compress=True`` writes it): no test
pickles anything.
"""

from __future__ import annotations

import copy
import importlib
import io
import random
import re
import sys
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.errors import (
    ConversionError,
    DeserializationError,
    IntegrityError,
    MissingExtraError,
    ModelRefusedError,
    ValidationError,
)
from cleanroom.models.manifest import (
    MODEL_MANIFEST_TYP,
    ModelDescription,
    ModelManifest,
    TensorSpec,
)

CREATED = "2026-01-02T03:04:05Z"
FEATURES = ("age", "balance", "tenure")
# distinctive weights: no refusal message may quote them
WEIGHTS = [[0.8125, -1.4375], [2.5625, 0.3125], [-0.6875, 1.1875]]
# pickle protocol 4 of the int 1: PROTO 4, BININT1 1, STOP
PICKLE = b"\x80\x04K\x01."


def _description(**changes: Any) -> ModelDescription:
    fields: dict[str, Any] = {
        "sha256": "ab" * 32,
        "size": 123,
        "ir_version": 8,
        "opsets": (("ai.onnx", 17),),
        "producer_name": "cleanroom-tests",
        "producer_version": "1",
        "runtime_version": "1.32.0",
        "inputs": (TensorSpec("features", "float", ("batch", 3)),),
        "outputs": (TensorSpec("scores", "float", ("batch", 2)),),
    }
    fields.update(changes)
    return ModelDescription(**fields)


def _manifest(
    vendor: Party, description: ModelDescription, features: tuple[str, ...] = FEATURES
) -> ModelManifest:
    return ModelManifest(
        name="churn",
        version="2.1.0",
        vendor_name=vendor.name,
        vendor_fingerprint=vendor.identity.fingerprint,
        features=features,
        model=description,
        created_at=CREATED,
    )


def _resign(document: dict[str, Any], vendor: Party, edit: Callable[[dict[str, Any]], None]) -> Any:
    """Tamper with a signed manifest's payload and sign it again, as a hostile vendor could."""
    payload = copy.deepcopy(document["payload"])
    edit(payload)
    return vendor.sign_document(payload, typ=MODEL_MANIFEST_TYP)


def _assert_clean(message: str, *secrets: bytes) -> None:
    """A refusal names what is wrong and quotes nothing of the model."""
    assert message
    assert len(message) < 400
    assert message.isprintable()
    assert "\\x" not in message
    for weight in (w for row in WEIGHTS for w in row):
        assert str(weight) not in message
    for secret in secrets:
        for start in range(len(secret) - 5):
            window = secret[start : start + 6]
            if re.fullmatch(rb"[A-Za-z0-9._]+", window):
                continue  # a tensor or op name may appear: it names what is wrong
            assert window.decode("latin-1") not in message
            assert window.hex() not in message


# -- manifests (pure) ---------------------------------------------------------------


def test_a_signed_manifest_round_trips_through_canonical_json(bank: Party) -> None:
    from cleanroom.crypto.canonical import canonical_json  # noqa: PLC0415

    manifest = _manifest(bank, _description())
    document = manifest.sign(bank)
    assert ModelManifest.verify(document, bank.identity) == manifest
    assert manifest.canonical() == canonical_json(document["payload"])
    assert document["payload"]["model"]["inputs"] == [
        {"name": "features", "type": "float", "shape": ["batch", 3]}
    ]
    assert len(manifest.digest()) == 64


def test_only_the_named_vendor_signs_and_verifies(bank: Party, merchant: Party) -> None:
    manifest = _manifest(bank, _description())
    with pytest.raises(ValueError, match="signed by the vendor it names"):
        manifest.sign(merchant)
    with pytest.raises(IntegrityError):
        ModelManifest.verify(manifest.sign(bank), merchant.identity)
    forged = _resign(manifest.sign(bank), merchant, lambda p: None)
    with pytest.raises(IntegrityError, match="different vendor"):
        ModelManifest.verify(forged, merchant.identity)


def test_any_edit_to_a_signed_manifest_breaks_its_signature(bank: Party) -> None:
    document = _manifest(bank, _description()).sign(bank)
    for edit in (
        lambda p: p["model"].update(sha256="cd" * 32),
        lambda p: p["model"]["inputs"][0].update(name="feature"),
        lambda p: p.update(model_version="2.1.1"),
        lambda p: p["features"].reverse(),
    ):
        tampered = copy.deepcopy(document)
        edit(tampered["payload"])
        with pytest.raises(IntegrityError):
            ModelManifest.verify(tampered, bank.identity)


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (lambda p: p["model"]["opsets"].update({"com.microsoft": 1}), "opsets"),
        (lambda p: p["model"].update(format="pickle"), "format"),
        (lambda p: p["model"]["inputs"][0].update(type="object"), "unknown tensor element type"),
        (lambda p: p["model"]["inputs"][0].update(shape=["batch", -3]), "invalid dimension"),
        (lambda p: p.update(features=["age", "balance"]), "names 2 columns"),
        (lambda p: p.update(features=["age", "age", "tenure"]), "distinct"),
        (lambda p: p.update(name="../churn"), "model name"),
        (lambda p: p["model"].update(outputs=[]), "outputs"),
    ],
)
def test_a_signed_but_invalid_manifest_is_refused(
    bank: Party, edit: Callable[[dict[str, Any]], None], phrase: str
) -> None:
    document = _resign(_manifest(bank, _description()).sign(bank), bank, edit)
    with pytest.raises(DeserializationError, match=phrase):
        ModelManifest.verify(document, bank.identity)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"sha256": "AB" * 32}, "sha256"),
        ({"size": 0}, "at least one byte"),
        ({"opsets": ()}, "at least one"),
        ({"opsets": (("ai.onnx", 17), ("ai.onnx", 18))}, "each domain once"),
        ({"opsets": (("ai.onnx.ml", 3), ("ai.onnx", 17))}, "sorted"),
        ({"opsets": (("com.microsoft", 1),)}, "outside"),
        ({"inputs": ()}, "at least one input"),
        ({"outputs": (TensorSpec("a", "float", ()), TensorSpec("a", "int64", ()))}, "duplicate"),
    ],
)
def test_a_description_checks_its_invariants(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        _description(**changes)


@pytest.mark.parametrize(
    ("spec", "phrase"),
    [
        (("", "float", ()), "tensor name"),
        (("x", "object", ()), "element type"),
        (("x", "float", (True,)), "invalid dimension"),
        (("x", "float", (-1,)), "invalid dimension"),
        (("x", "float", ("batch size",)), "dimension name"),
    ],
)
def test_a_tensor_spec_checks_its_invariants(spec: tuple[Any, ...], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        TensorSpec(*spec)


# -- the enclave's loader: small graphs built by hand --------------------------------


@pytest.fixture(scope="module")
def onnx() -> Any:
    pytest.importorskip("onnxruntime", reason="the [server] extra (onnxruntime) is not installed")
    return pytest.importorskip("onnx", reason="the [server] extra (onnx) is not installed")


def _tiny(
    onnx: Any, *, nodes: list[Any] | None = None, opsets: dict[str, int] | None = None
) -> Any:
    """``scores = features @ weights``: a 3-feature, 2-output linear model."""
    import numpy as np  # noqa: PLC0415

    helper = onnx.helper
    weights = onnx.numpy_helper.from_array(np.array(WEIGHTS, dtype=np.float32), "weights")
    graph = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["features", "weights"], ["scores"])],
        "tiny",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["batch", 2])],
        [weights],
    )
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or {"": 17}).items()]
    model = helper.make_model(
        graph,
        opset_imports=imports,
        producer_name="cleanroom-tests",
        producer_version="1",
    )
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def tiny_bytes(onnx: Any) -> bytes:
    data: bytes = _tiny(onnx).SerializeToString()
    return data


def test_describe_reads_the_signature_opsets_and_digest(onnx: Any, tiny_bytes: bytes) -> None:
    import hashlib  # noqa: PLC0415

    import onnxruntime  # noqa: PLC0415

    from cleanroom.models.onnx import describe  # noqa: PLC0415

    description = describe(tiny_bytes)
    assert description.sha256 == hashlib.sha256(tiny_bytes).hexdigest()
    assert description.size == len(tiny_bytes)
    assert description.opsets == (("ai.onnx", 17),)
    assert (description.producer_name, description.producer_version) == ("cleanroom-tests", "1")
    assert description.runtime_version == onnxruntime.__version__
    assert description.inputs == (TensorSpec("features", "float", ("batch", 3)),)
    assert description.outputs == (TensorSpec("scores", "float", ("batch", 2)),)


def test_a_model_loads_from_bytes_and_runs(
    onnx: Any, tiny_bytes: bytes, bank: Party, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np  # noqa: PLC0415

    from cleanroom.models.onnx import describe, load  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)  # a stray profile or optimized-model file would land here
    document = _manifest(bank, describe(tiny_bytes)).sign(bank)
    session = load(tiny_bytes, ModelManifest.verify(document, bank.identity), threads=2)
    rows = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=np.float32)
    (scores,) = session.run({"features": rows}, ["scores"])
    np.testing.assert_allclose(scores, rows @ np.array(WEIGHTS, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelRefusedError, match="no output 'label'"):
        session.run({"features": rows}, ["label"])
    with pytest.raises(ValidationError, match="do not fit"):
        session.run({"features": rows[:, :2]}, ["scores"])
    with pytest.raises(ValidationError, match="takes inputs"):
        session.run({"other": rows}, ["scores"])


def test_session_options_bound_threads_and_write_nothing(onnx: Any) -> None:
    from cleanroom.models.onnx import session_options  # noqa: PLC0415

    options = session_options(threads=3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.enable_profiling is False
    assert options.optimized_model_filepath == ""
    assert options.get_session_config_entry("session.load_model_format") == "ONNX"
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="threads"):
            session_options(threads=bad)  # type: ignore[arg-type]


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.pkl", PICKLE)
    return buffer.getvalue()


NOT_ONNX = [
    ("empty", b"", "empty"),
    ("pickle", PICKLE, "pickle"),
    ("joblib-zlib", zlib.compress(PICKLE), "joblib"),
    ("joblib-xz", b"\xfd7zXZ\x00\x00\x04" + bytes(16), "joblib"),
    ("zip", _zip_bytes(), "zip archive"),
    ("gzip", b"\x1f\x8b\x08\x00" + bytes(16), "gzip"),
    ("lightgbm-text", b"tree\nversion=v4\nnum_class=1\n", "text file"),
    ("script", b"import os\nos.system('id')\n", "text file"),
    ("pickle-protocol-0", b"cos\nsystem\n(S'id'\ntR.", "text file"),
    ("xgboost-json", b'{"learner": {"attributes": {}}}', "JSON"),
    ("numpy", b"\x93NUMPY\x01\x00v\x00{'descr'", "NumPy"),
    ("hdf5", b"\x89HDF\r\n\x1a\n" + bytes(8), "HDF5"),
    ("ort-flatbuffer", b"\x1c\x00\x00\x00ORTM" + bytes(24), "does not start with an IR version"),
]


@pytest.mark.parametrize(
    ("data", "phrase"), [c[1:] for c in NOT_ONNX], ids=[c[0] for c in NOT_ONNX]
)
def test_anything_but_onnx_is_refused_by_name(onnx: Any, data: bytes, phrase: str) -> None:
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    with pytest.raises(ModelRefusedError, match=phrase) as caught:
        describe(data)
    _assert_clean(str(caught.value), data)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_refused(onnx: Any, seed: int) -> None:
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(1, 600))
    if seed % 2:
        data = b"\x08" + data  # past the format sniff, into the parser
    with pytest.raises(ModelRefusedError) as caught:
        describe(data)
    _assert_clean(str(caught.value), data)


def test_every_truncation_of_a_model_is_refused(onnx: Any, tiny_bytes: bytes) -> None:
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    for length in range(len(tiny_bytes)):
        with pytest.raises(ModelRefusedError) as caught:
            describe(tiny_bytes[:length])
        _assert_clean(str(caught.value), tiny_bytes)


def test_changed_bytes_or_a_changed_digest_are_integrity_errors(
    onnx: Any, tiny_bytes: bytes, bank: Party
) -> None:
    from cleanroom.models.onnx import describe, load  # noqa: PLC0415

    document = _manifest(bank, describe(tiny_bytes)).sign(bank)
    manifest = ModelManifest.verify(document, bank.identity)
    flipped = bytearray(tiny_bytes)
    flipped[-20] ^= 0x01  # inside the weights: still a valid model, a different one
    for data in (bytes(flipped), tiny_bytes[:-1], tiny_bytes + b"\x00"):
        with pytest.raises(IntegrityError, match="do not match the signed manifest") as caught:
            load(data, manifest)
        _assert_clean(str(caught.value), tiny_bytes)
    other = _resign(document, bank, lambda p: p["model"].update(sha256="cd" * 32))
    with pytest.raises(IntegrityError, match="do not match the signed manifest"):
        load(tiny_bytes, ModelManifest.verify(other, bank.identity))


def _edit_input(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(payload: dict[str, Any]) -> None:
        payload["model"]["inputs"][0].update(changes)
        payload["features"] = []

    return edit


def _edit_output(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p["model"]["outputs"][0].update(changes)


SIGNATURE_EDITS = [
    ("input renamed", _edit_input(name="inputs"), ModelRefusedError, "'inputs'"),
    ("input widened", _edit_input(shape=["batch", 4]), ModelRefusedError, r"\[batch, 4\]"),
    ("fixed batch", _edit_input(shape=[1, 3]), ModelRefusedError, r"\[1, 3\]"),
    ("input type", _edit_input(type="double"), ModelRefusedError, "double"),
    ("output renamed", _edit_output(name="label"), ModelRefusedError, "'label'"),
    ("output shape", _edit_output(shape=["batch", 3]), ModelRefusedError, r"\[batch, 3\]"),
    (
        "extra output",
        lambda p: p["model"]["outputs"].append({"name": "x", "type": "float", "shape": []}),
        ModelRefusedError,
        "'x'",
    ),
    ("opset", lambda p: p["model"]["opsets"].update({"ai.onnx": 18}), ModelRefusedError, "opsets"),
    ("producer", lambda p: p["model"]["producer"].update(name="x"), ModelRefusedError, "producer"),
]


@pytest.mark.parametrize(
    ("edit", "error", "phrase"),
    [c[1:] for c in SIGNATURE_EDITS],
    ids=[c[0] for c in SIGNATURE_EDITS],
)
def test_a_manifest_whose_signature_differs_from_the_model_is_refused(
    onnx: Any,
    tiny_bytes: bytes,
    bank: Party,
    edit: Callable[[dict[str, Any]], None],
    error: type[Exception],
    phrase: str,
) -> None:
    from cleanroom.models.onnx import describe, load  # noqa: PLC0415

    document = _resign(_manifest(bank, describe(tiny_bytes)).sign(bank), bank, edit)
    with pytest.raises(error, match=phrase) as caught:
        load(tiny_bytes, ModelManifest.verify(document, bank.identity))
    _assert_clean(str(caught.value), tiny_bytes)


def _external(onnx: Any, tensor: Any) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/weights.bin"), ("offset", "0"), ("length", "24")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _with_external_initializer(onnx: Any) -> Any:
    model = _tiny(onnx)
    _external(onnx, model.graph.initializer[0])
    return model


def _with_external_constant(onnx: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    helper = onnx.helper
    value = onnx.numpy_helper.from_array(np.array(WEIGHTS, dtype=np.float32), "constant")
    _external(onnx, value)
    return _tiny(
        onnx,
        nodes=[
            helper.make_node("Constant", [], ["weights2"], value=value),
            helper.make_node("MatMul", ["features", "weights2"], ["scores"]),
        ],
    )


def _with_external_in_a_subgraph(onnx: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    helper = onnx.helper
    value = onnx.numpy_helper.from_array(np.array(WEIGHTS, dtype=np.float32), "hidden")
    _external(onnx, value)
    out = [helper.make_tensor_value_info("branch", onnx.TensorProto.FLOAT, [3, 2])]
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["branch"], value=value)], "b", [], out
    )
    cond = onnx.numpy_helper.from_array(np.array(object=True), "cond")
    return _tiny(
        onnx,
        nodes=[
            helper.make_node("Constant", [], ["c"], value=cond),
            helper.make_node("If", ["c"], ["weights2"], then_branch=branch, else_branch=branch),
            helper.make_node("MatMul", ["features", "weights2"], ["scores"]),
        ],
    )


def _custom_domain(onnx: Any) -> Any:
    node = onnx.helper.make_node(
        "Secret", ["features", "weights"], ["scores"], domain="com.example"
    )
    return _tiny(onnx, nodes=[node], opsets={"": 17, "com.example": 1})


def _contrib_op(onnx: Any) -> Any:
    node = onnx.helper.make_node(
        "FusedMatMul", ["features", "weights"], ["scores"], domain="com.microsoft"
    )
    return _tiny(onnx, nodes=[node], opsets={"": 17, "com.microsoft": 1})


def _custom_node_without_import(onnx: Any) -> Any:
    node = onnx.helper.make_node("Secret", ["features", "weights"], ["scores"], domain="ai.evil")
    return _tiny(onnx, nodes=[node])


def _local_function(onnx: Any) -> Any:
    helper = onnx.helper
    model = _tiny(onnx)
    body = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    function = helper.make_function(
        "ai.onnx.ml", "MyMatMul", ["x", "w"], ["y"], body, [helper.make_opsetid("", 17)]
    )
    model.functions.append(function)
    return model


def _checker_fails(onnx: Any) -> Any:
    node = onnx.helper.make_node("MatMul", ["features", "missing"], ["scores"])
    return _tiny(onnx, nodes=[node])


def _with_external_sparse_initializer(onnx: Any) -> Any:
    import numpy as np  # noqa: PLC0415

    model = _tiny(onnx)
    values = onnx.numpy_helper.from_array(np.array([1.0], dtype=np.float32), "sparse")
    indices = onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "sparse_indices")
    _external(onnx, values)
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [3, 2]))
    return model


def _with_training_info(onnx: Any) -> Any:
    model = _tiny(onnx)
    model.training_info.add()
    return model


RULE_BREAKERS = [
    (
        "external initializer",
        _with_external_initializer,
        "'weights' stores its data in an external",
    ),
    ("external constant", _with_external_constant, "stores its data in an external file"),
    (
        "external in subgraph",
        _with_external_in_a_subgraph,
        "'hidden' stores its data in an external",
    ),
    ("custom domain", _custom_domain, "op domain 'com.example'"),
    ("contrib op", _contrib_op, "op domain 'com.microsoft'"),
    ("custom node", _custom_node_without_import, "node 'Secret' is in op domain 'ai.evil'"),
    ("local function", _local_function, "defines its own functions"),
    ("checker", _checker_fails, "ONNX checker"),
    (
        "external sparse",
        _with_external_sparse_initializer,
        "'sparse' stores its data in an external",
    ),
    ("training info", _with_training_info, "training information"),
]


@pytest.mark.parametrize(
    ("build", "phrase"), [c[1:] for c in RULE_BREAKERS], ids=[c[0] for c in RULE_BREAKERS]
)
def test_models_that_break_the_enclaves_rules_are_refused(
    onnx: Any, build: Callable[[Any], Any], phrase: str
) -> None:
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    data = build(onnx).SerializeToString()
    with pytest.raises(ModelRefusedError, match=phrase) as caught:
        describe(data)
    message = str(caught.value)
    assert "etc/weights.bin" not in message
    _assert_clean(message, data)


def test_loading_without_onnxruntime_names_the_extra(
    onnx: Any, tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cleanroom.models.onnx import describe  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"confidential-cleanroom\[server\]"):
        describe(tiny_bytes)


# -- the vendor's conversion, and scoring --------------------------------------------


@pytest.fixture(scope="module")
def sklearn() -> Any:
    pytest.importorskip("onnx", reason="the [server] extra (onnx) is not installed")
    pytest.importorskip("onnxruntime", reason="the [server] extra (onnxruntime) is not installed")
    pytest.importorskip("skl2onnx", reason="the [ml] extra (skl2onnx) is not installed")
    return pytest.importorskip("sklearn", reason="the [ml] extra (scikit-learn) is not installed")


def _data(classes: int = 2, rows: int = 240) -> tuple[Any, Any]:
    from sklearn.datasets import make_classification  # noqa: PLC0415

    x, y = make_classification(
        n_samples=rows,
        n_features=len(FEATURES),
        n_informative=3,
        n_redundant=0,
        n_classes=classes,
        random_state=7,
    )
    return x, y


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _sklearn_models() -> list[Any]:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    return [
        LogisticRegression(),
        make_pipeline(StandardScaler(), LogisticRegression()),
        GradientBoostingClassifier(n_estimators=8, random_state=0),
        RandomForestClassifier(n_estimators=8, random_state=0, n_jobs=1),
    ]


MAKERS: list[tuple[str, str, Callable[[], Any]]] = [
    ("logistic", "sklearn", lambda: _sklearn_models()[0]),
    ("scaled-logistic", "sklearn", lambda: _sklearn_models()[1]),
    ("gradient-boosting", "sklearn", lambda: _sklearn_models()[2]),
    ("random-forest", "sklearn", lambda: _sklearn_models()[3]),
    (
        "lightgbm",
        "lightgbm",
        lambda: _module("lightgbm").LGBMClassifier(n_estimators=8, verbose=-1, n_jobs=1),
    ),
    ("xgboost", "xgboost", lambda: _module("xgboost").XGBClassifier(n_estimators=8, n_jobs=1)),
]


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize(("library", "make"), [m[1:] for m in MAKERS], ids=[m[0] for m in MAKERS])
def test_a_converted_model_predicts_like_the_native_one(
    sklearn: Any, library: str, make: Callable[[], Any], classes: int, bank: Party
) -> None:
    import numpy as np  # noqa: PLC0415

    if library != "sklearn":
        pytest.importorskip("onnxmltools", reason="the [ml] extra (onnxmltools) is not installed")
        pytest.importorskip(library, reason=f"the [ml] extra ({library}) is not installed")
    from cleanroom.models.convert import check_conversion, to_onnx  # noqa: PLC0415
    from cleanroom.models.onnx import describe, load  # noqa: PLC0415

    x, y = _data(classes)
    native = make().fit(x, y)
    model_bytes = to_onnx(native, features=FEATURES)
    check_conversion(native, model_bytes, x)
    description = describe(model_bytes)
    assert [t.name for t in description.outputs] == ["label", "probabilities"]
    assert description.inputs == (TensorSpec("features", "float", ("batch", 3)),)
    document = _manifest(bank, description).sign(bank)
    session = load(model_bytes, ModelManifest.verify(document, bank.identity))
    rows = x.astype(np.float32)
    label, probabilities = session.run({"features": rows}, ["label", "probabilities"])
    assert np.array_equal(label, native.predict(rows))
    np.testing.assert_allclose(probabilities, native.predict_proba(rows), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("library", "make"), [m[1:] for m in MAKERS], ids=[m[0] for m in MAKERS])
def test_a_model_fitted_on_a_data_frame_takes_its_columns_in_order(
    sklearn: Any, library: str, make: Callable[[], Any]
) -> None:
    pd = pytest.importorskip("pandas", reason="the [pandas] extra is not installed")
    if library != "sklearn":
        pytest.importorskip("onnxmltools", reason="the [ml] extra (onnxmltools) is not installed")
        pytest.importorskip(library, reason=f"the [ml] extra ({library}) is not installed")
    from cleanroom.models.convert import check_conversion, to_onnx  # noqa: PLC0415

    x, y = _data(rows=80)
    native = make().fit(pd.DataFrame(x, columns=list(FEATURES)), y)
    check_conversion(native, to_onnx(native, features=FEATURES), x)
    with pytest.raises(ValueError, match="in that order"):
        to_onnx(native, features=FEATURES[::-1])


REGRESSORS: list[tuple[str, str, Callable[[], Any]]] = [
    (
        "random-forest",
        "sklearn",
        lambda: _module("sklearn.ensemble").RandomForestRegressor(n_estimators=4, random_state=0),
    ),
    (
        "lightgbm",
        "lightgbm",
        lambda: _module("lightgbm").LGBMRegressor(n_estimators=4, verbose=-1, n_jobs=1),
    ),
    ("xgboost", "xgboost", lambda: _module("xgboost").XGBRegressor(n_estimators=4, n_jobs=1)),
]


@pytest.mark.parametrize(
    ("library", "make"), [m[1:] for m in REGRESSORS], ids=[m[0] for m in REGRESSORS]
)
def test_a_converted_regressor_predicts_like_the_native_one(
    sklearn: Any, library: str, make: Callable[[], Any]
) -> None:
    if library != "sklearn":
        pytest.importorskip("onnxmltools", reason="the [ml] extra (onnxmltools) is not installed")
        pytest.importorskip(library, reason=f"the [ml] extra ({library}) is not installed")
    from cleanroom.models.convert import check_conversion, to_onnx  # noqa: PLC0415

    x, _ = _data(rows=80)
    native = make().fit(x, x[:, 0] * 2.0 - x[:, 1])
    description = check_conversion(native, to_onnx(native, features=FEATURES), x, atol=1e-4)
    assert description.outputs == (TensorSpec("variable", "float", ("batch", 1)),)


def _not_converting() -> list[tuple[str, Callable[[], Any], type[Exception], str]]:
    from sklearn.ensemble import VotingClassifier  # noqa: PLC0415
    from sklearn.gaussian_process import GaussianProcessClassifier  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import SplineTransformer  # noqa: PLC0415
    from sklearn.tree import DecisionTreeClassifier  # noqa: PLC0415

    voters = [("a", LogisticRegression()), ("b", DecisionTreeClassifier(random_state=0))]
    return [
        (
            "spline",
            lambda: make_pipeline(SplineTransformer(), LogisticRegression()),
            ConversionError,
            "does not convert",
        ),
        (
            "soft-voting",
            lambda: VotingClassifier(voters, voting="soft"),
            ConversionError,
            "does not convert",
        ),
        # converts, but to com.microsoft contrib ops the enclave refuses
        (
            "gaussian-process",
            lambda: GaussianProcessClassifier(random_state=0),
            ModelRefusedError,
            "com.microsoft",
        ),
    ]


def test_what_does_not_convert_is_refused_by_name(sklearn: Any) -> None:
    from cleanroom.models.convert import to_onnx  # noqa: PLC0415

    x, y = _data(rows=80)
    for name, make, error, phrase in _not_converting():
        with pytest.raises(error, match=phrase) as caught:
            to_onnx(make().fit(x, y), features=FEATURES)
        assert len(str(caught.value)) < 200, name


def _converting_too() -> list[Callable[[], Any]]:
    from sklearn.neighbors import KNeighborsClassifier  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415
    from sklearn.svm import SVC  # noqa: PLC0415

    return [
        lambda: SVC(probability=True, random_state=0),
        KNeighborsClassifier,
        lambda: MLPClassifier(hidden_layer_sizes=(4,), max_iter=300, random_state=0),
    ]


def test_the_other_classifiers_in_the_guide_convert(sklearn: Any) -> None:
    import warnings  # noqa: PLC0415

    from cleanroom.models.convert import check_conversion, to_onnx  # noqa: PLC0415

    x, y = _data(rows=120)
    for make in _converting_too():
        with warnings.catch_warnings():
            # MLP's convergence warning on tiny data; scikit-learn 1.9 deprecates SVC's
            # probability=True (gone in 1.11), and skl2onnx reads its probA_ and probB_
            warnings.simplefilter("ignore")
            native = make().fit(x, y)
            model_bytes = to_onnx(native, features=FEATURES)
        check_conversion(native, model_bytes, x, atol=1e-4)


def test_hist_gradient_boosting_converts_only_with_protobuf_before_7(sklearn: Any) -> None:
    """skl2onnx 1.20 writes numpy booleans into integer attributes of the tree
    ensemble: protobuf 6 warns (DeprecationWarning), protobuf 7 refuses."""
    import warnings  # noqa: PLC0415

    from google.protobuf import __version__ as protobuf_version  # noqa: PLC0415
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415

    from cleanroom.models.convert import check_conversion, to_onnx  # noqa: PLC0415

    x, y = _data(rows=120)
    native = HistGradientBoostingClassifier(max_iter=8, random_state=0).fit(x, y)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Field onnx.AttributeProto.ints", DeprecationWarning)
        if int(protobuf_version.split(".")[0]) >= 7:
            with pytest.raises(ConversionError, match="HistGradientBoostingClassifier"):
                to_onnx(native, features=FEATURES)
        else:
            check_conversion(native, to_onnx(native, features=FEATURES), x)


def test_conversion_refuses_foreign_objects_and_wrong_feature_lists(sklearn: Any) -> None:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from cleanroom.models.convert import to_onnx  # noqa: PLC0415

    with pytest.raises(ConversionError, match="cannot convert a dict"):
        to_onnx({"weights": WEIGHTS}, features=FEATURES)
    x, y = _data(rows=60)
    native = LogisticRegression().fit(x, y)
    with pytest.raises(ValueError, match="takes 3 features"):
        to_onnx(native, features=FEATURES[:2])
    with pytest.raises(ValueError, match="each input column once"):
        to_onnx(native, features=("age", "age", "tenure"))


def test_conversion_without_the_ml_extra_names_it(
    sklearn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from cleanroom.models.convert import to_onnx  # noqa: PLC0415

    x, y = _data(rows=60)
    native = LogisticRegression().fit(x, y)
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'confidential-cleanroom\[ml\]'"):
        to_onnx(native, features=FEATURES)


def test_a_zipmap_output_is_refused_with_a_hint(sklearn: Any) -> None:
    from skl2onnx import convert_sklearn  # noqa: PLC0415
    from skl2onnx.common.data_types import FloatTensorType  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from cleanroom.models.onnx import describe  # noqa: PLC0415

    x, y = _data(rows=60)
    native = LogisticRegression().fit(x, y)
    converted = convert_sklearn(native, initial_types=[("features", FloatTensorType([None, 3]))])
    with pytest.raises(ModelRefusedError, match="zipmap off"):
        describe(converted.SerializeToString())


@pytest.fixture(scope="module")
def scored(sklearn: Any) -> tuple[Any, Any, Any]:
    """A session for a 3-class logistic regression, its native model and its data."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from cleanroom.models.convert import to_onnx  # noqa: PLC0415
    from cleanroom.models.onnx import describe, load  # noqa: PLC0415

    vendor = Party.create("vendor")
    x, y = _data(classes=3, rows=50)
    native = LogisticRegression().fit(x, y)
    model_bytes = to_onnx(native, features=FEATURES)
    document = _manifest(vendor, describe(model_bytes)).sign(vendor)
    return load(model_bytes, ModelManifest.verify(document, vendor.identity)), native, x


def _table(x: Any) -> Any:
    import pyarrow as pa  # noqa: PLC0415

    return pa.table(
        {
            "card_id": [f"card-{i}" for i in range(len(x))],
            "tenure": x[:, 2],
            "age": x[:, 0],
            "balance": pa.array(x[:, 1]),
        }
    )


def test_score_returns_only_the_outputs_asked_for(scored: tuple[Any, Any, Any]) -> None:
    import numpy as np  # noqa: PLC0415

    from cleanroom.models.score import score  # noqa: PLC0415

    session, native, x = scored
    rows = x.astype(np.float32)
    labels = score(_table(x), session)
    assert labels.column_names == ["label"]
    assert labels.column("label").to_pylist() == native.predict(rows).tolist()
    both = score(_table(x), session, outputs=("label", "probabilities"), batch_rows=7)
    assert both.column_names == ["label", "probabilities"]
    assert both.column("probabilities").type.list_size == 3
    np.testing.assert_allclose(
        np.array(both.column("probabilities").to_pylist()), native.predict_proba(rows), atol=1e-5
    )
    assert both.column("label").equals(labels.column("label"))
    empty = score(_table(x).slice(0, 0), session, outputs=("probabilities",))
    assert (empty.num_rows, empty.column_names) == (0, ["probabilities"])


def test_score_refuses_bad_columns_and_undeclared_outputs(scored: tuple[Any, Any, Any]) -> None:
    import pyarrow as pa  # noqa: PLC0415

    from cleanroom.models.score import score  # noqa: PLC0415

    session, _, x = scored
    table = _table(x)
    with pytest.raises(ModelRefusedError, match="no output 'scores'"):
        score(table, session, outputs=("scores",))
    with pytest.raises(ValidationError, match="column 'age': the table has no such column"):
        score(table.drop_columns(["age"]), session)
    nulls = table.set_column(2, "age", pa.array([None] * len(x), type=pa.float64()))
    with pytest.raises(ValidationError, match="column 'age': holds nulls"):
        score(nulls, session)
    text = table.set_column(2, "age", pa.array(["1"] * len(x)))
    with pytest.raises(ValidationError, match="column 'age': is string"):
        score(text, session)
    with pytest.raises(ValueError, match="batch_rows"):
        score(table, session, batch_rows=0)


def test_a_feature_value_never_reaches_an_error_text(scored: tuple[Any, Any, Any]) -> None:
    """A safe cast of an integer past 2**53 to float raises an error quoting it: the
    value is rounded instead, as the model's float32 input rounds it anyway."""
    import pyarrow as pa  # noqa: PLC0415

    from cleanroom.models.score import score  # noqa: PLC0415

    session, _, x = scored
    secret = 9_007_199_254_740_993  # 2**53 + 1
    values = [secret] + [1] * (len(x) - 1)
    table = _table(x).set_column(2, "age", pa.array(values, type=pa.int64()))
    labels = score(table, session)
    assert labels.num_rows == len(x)


def test_score_refuses_a_model_that_returns_the_wrong_number_of_rows(
    onnx: Any, bank: Party
) -> None:
    """A model may declare ``[batch, 2]`` and return one row: the declared shape is
    not enforced by onnxruntime, so scoring checks every output's row count."""
    pytest.importorskip("sklearn", reason="the [ml] extra (scikit-learn) is not installed")
    from cleanroom.models.onnx import describe, load  # noqa: PLC0415
    from cleanroom.models.score import score  # noqa: PLC0415

    helper = onnx.helper
    import numpy as np  # noqa: PLC0415
    import pyarrow as pa  # noqa: PLC0415

    axes = onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")
    model = _tiny(
        onnx,
        nodes=[
            helper.make_node("MatMul", ["features", "weights"], ["per_row"]),
            helper.make_node("Constant", [], ["axes"], value=axes),
            helper.make_node("ReduceSum", ["per_row", "axes"], ["scores"], keepdims=1),
        ],
    )
    model_bytes = model.SerializeToString()
    session = load(model_bytes, _manifest(bank, describe(model_bytes)))
    x, _ = _data(rows=5)
    with pytest.raises(ModelRefusedError, match="one row per input row"):
        score(_table(x), session, outputs=("scores",))
    bare = load(model_bytes, _manifest(bank, describe(model_bytes), features=()))
    with pytest.raises(ModelRefusedError, match="names no feature columns"):
        score(_table(x), bare, outputs=("scores",))
    twice = _table(x).append_column("age", pa.array(x[:, 0]))
    with pytest.raises(ValidationError, match="more than once"):
        score(twice, session, outputs=("scores",))
    with pytest.raises(ValueError, match="each output once"):
        score(_table(x), session, outputs=())
