"""Describe and load ONNX models from bytes: the enclave's only model loader.

A model reaches the enclave as decrypted bytes and never touches a file:
onnxruntime loads it from memory. Before it does, the bytes pass these checks,
each tied to a threat:

(1) size: non-empty and under :data:`MAX_MODEL_BYTES` (a model is one protobuf
    message, at most 2 GiB, and lives in enclave memory);
(2) format: not a pickle, joblib, zip, archive or text file. Those are refused
    by name: a pickle runs code when loaded, so no such file is ever opened.
    An ONNX file is a protobuf whose first field is the IR version;
(3) parse: the bytes parse as an ONNX ``ModelProto`` with a graph;
(4) no external data: no tensor anywhere (initializers, sparse initializers,
    constant attributes, subgraphs) points to a file. The enclave loads from
    bytes only; a path would read whatever the enclave's file system holds;
(5) op domains: only ``ai.onnx`` and ``ai.onnx.ml``, in the opsets and on every
    node of every subgraph; no model-local functions, no training info. Other
    domains (``com.microsoft`` contrib ops, custom op libraries) are native
    code the measurement does not vouch for;
(6) the ONNX checker accepts the model (full check, with shape inference);
(7) onnxruntime builds a CPU session from the bytes, with profiling off, no
    optimized-model file, ONNX format only, and a bounded thread count;
(8) every input and output is a tensor of a known element type.

:func:`load` adds, before (2): (0) the bytes' SHA-256 and size equal the
signed manifest's, so unsigned bytes never reach a parser; and after (8):
(9) the signature, opsets and producer rebuilt from the loaded session equal
the manifest's.

Errors are :class:`ModelRefusedError` (or :class:`IntegrityError` for (0));
their messages never quote model bytes. Needs ``onnx`` and ``onnxruntime``
(the ``[server]`` extra), imported on first use.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cleanroom.errors import IntegrityError, MissingExtraError, ModelRefusedError, ValidationError
from cleanroom.models.manifest import (
    ALLOWED_DOMAINS,
    ELEMENT_TYPES,
    ModelDescription,
    ModelManifest,
    TensorSpec,
)

RUNTIME_EXTRA = "pip install 'confidential-cleanroom[server]'"

if TYPE_CHECKING:
    import numpy.typing as npt
    import onnx

MAX_MODEL_BYTES = 1 << 30
LOG_FATAL_ONLY = 4  # onnxruntime severities: 0 verbose ... 3 error, 4 fatal
DEFAULT_THREADS = 1

# Signatures of formats people mistake for, or try to pass off as, a model file.
_NOT_ONNX: tuple[tuple[bytes, str], ...] = (
    (b"\x80", "a Python pickle (or an uncompressed joblib file)"),
    (b"PK\x03\x04", "a zip archive (a PyTorch, Keras or joblib bundle?)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file (a compressed joblib file?)"),
    (b"ZF", "a compressed joblib file"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras model?)"),
    (b"{", "JSON or UBJSON (a native XGBoost or LightGBM model?)"),
)
_ZLIB_SECOND = frozenset(b"\x01\x5e\x9c\xda")
_PICKLE_WARNING = "pickle and joblib files can run code when loaded, so they are never opened"
_TENSOR_TYPE = re.compile(r"tensor\(([a-z0-9]+)\)")


def _onnx() -> Any:
    try:
        import onnx  # noqa: PLC0415
    except ImportError as exc:
        raise MissingExtraError(f"loading models needs the onnx package: {RUNTIME_EXTRA}") from exc
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        raise MissingExtraError(f"loading models needs onnxruntime: {RUNTIME_EXTRA}") from exc
    return onnxruntime


def _ort_errors(ort: Any) -> tuple[type[BaseException], ...]:
    state = ort.capi.onnxruntime_pybind11_state
    named = [getattr(state, n, None) for n in dir(state)]
    found = [c for c in named if isinstance(c, type) and issubclass(c, Exception)]
    return (RuntimeError, ValueError, *found)


# -- onnxruntime, typed as narrowly as this module uses it ------------------------


class _NodeArg(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> list[int | str | None]: ...


class _InferenceSession(Protocol):
    def get_inputs(self) -> list[_NodeArg]: ...
    def get_outputs(self) -> list[_NodeArg]: ...
    def run(
        self, output_names: list[str], input_feed: dict[str, Any], run_options: Any = None
    ) -> list[Any]: ...


@dataclass(frozen=True, eq=False)
class Session:
    """A loaded model: its verified manifest and an onnxruntime CPU session."""

    manifest: ModelManifest
    _session: _InferenceSession

    def __repr__(self) -> str:
        return f"Session({self.manifest!r})"

    def run(
        self,
        feeds: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        *,
        timeout_s: float | None = None,
    ) -> list[npt.NDArray[Any]]:
        """Run the model on ``feeds`` (one array per declared input) for ``outputs``.

        Raises :class:`ModelRefusedError` for an output the manifest does not
        declare, :class:`ValidationError` when the arrays do not fit the inputs,
        :class:`TimeoutError` when the run is stopped after ``timeout_s`` seconds
        (onnxruntime checks its terminate flag between kernels).
        """
        declared = [t.name for t in self.manifest.model.inputs]
        if sorted(feeds) != sorted(declared):
            raise ValidationError(f"the model takes inputs {declared}, got {sorted(feeds)}")
        for name in outputs:
            self.manifest.model.output(name)
        ort = _ort()
        options = ort.RunOptions()
        options.log_severity_level = LOG_FATAL_ONLY  # see session_options
        stopped = threading.Event()

        def stop() -> None:
            stopped.set()
            options.terminate = True

        timer = threading.Timer(timeout_s, stop) if timeout_s is not None else None
        if timer is not None:
            timer.start()
        try:
            results = self._session.run(list(outputs), dict(feeds), options)
        except _ort_errors(ort) as exc:
            if stopped.is_set():
                raise TimeoutError("the model ran over its time limit") from exc
            # onnxruntime's text names shapes and types; keep it on the cause only
            raise ValidationError("the input arrays do not fit the model's inputs") from exc
        finally:
            if timer is not None:
                timer.cancel()
        return list(results)


# -- the checks ---------------------------------------------------------------------


def _sniff(model_bytes: bytes) -> None:
    """(1) size and (2) format, before any parser sees the bytes."""
    if not isinstance(model_bytes, bytes | bytearray | memoryview):
        raise TypeError("model bytes must be bytes")
    size = len(model_bytes)
    if size == 0:
        raise ModelRefusedError("the model file is empty")
    if size > MAX_MODEL_BYTES:
        raise ModelRefusedError(f"the model is too large ({size} bytes; at most {MAX_MODEL_BYTES})")
    head = bytes(model_bytes[:16])
    for magic, kind in _NOT_ONNX:
        if head.startswith(magic):
            why = f": {_PICKLE_WARNING}" if "pickle" in kind or "joblib" in kind else ""
            raise ModelRefusedError(f"the model is {kind}, not ONNX{why}")
    if head[0] == 0x78 and len(head) > 1 and head[1] in _ZLIB_SECOND:
        raise ModelRefusedError(
            f"the model is zlib-compressed data (a compressed joblib file?), not ONNX: "
            f"{_PICKLE_WARNING}"
        )
    if _looks_like_text(bytes(model_bytes[:4096])):
        raise ModelRefusedError(
            "the model is a text file (a native model dump, a script, a pickle in text "
            "protocol?), not ONNX"
        )
    if head[0] != 0x08:
        # field 1 (ir_version, a varint) comes first in every ONNX serializer's output
        raise ModelRefusedError(
            "the model is not an ONNX file: it does not start with an IR version"
        )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the window's end is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\n\r" for c in text)


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    """(3) the bytes parse as a ModelProto with a graph and an opset."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # noqa: PLC0415

    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(model_bytes))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelRefusedError(
            "the model is not a valid ONNX file: it does not parse (truncated or corrupt)"
        ) from exc
    if model.ir_version < 1 or not model.HasField("graph") or not model.opset_import:
        raise ModelRefusedError(
            "the model is not a valid ONNX file: it lacks an IR version, a graph or an opset"
        )
    return model  # type: ignore[no-any-return]


def _subgraphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every graph nested in a node attribute (If, Loop, Scan)."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparses = [*attribute.sparse_tensors]
            if attribute.HasField("sparse_tensor"):
                sparses.append(attribute.sparse_tensor)
            for sparse in sparses:
                yield sparse.values
                yield sparse.indices


def _domain(name: str) -> str:
    return "ai.onnx" if name == "" else name


def _short(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


def _check_rules(model: onnx.ModelProto) -> None:
    """(4) no external data; (5) allowed op domains only; (6) the ONNX checker."""
    onnx = _onnx()
    external = onnx.TensorProto.EXTERNAL
    graphs = list(_subgraphs(model))
    for graph in graphs:  # (4)
        for tensor in _tensors(graph):
            if tensor.data_location == external or len(tensor.external_data) > 0:
                raise ModelRefusedError(
                    f"tensor {_short(tensor.name)} stores its data in an external file: "
                    "the enclave loads models from bytes only; save the model with its "
                    "weights inside (onnx.save_model(..., save_as_external_data=False))"
                )
    for opset in model.opset_import:  # (5)
        if _domain(opset.domain) not in ALLOWED_DOMAINS:
            raise ModelRefusedError(
                f"the model imports op domain {_short(opset.domain)}: only "
                f"{', '.join(ALLOWED_DOMAINS)} are allowed"
            )
    for graph in graphs:
        for node in graph.node:
            if _domain(node.domain) not in ALLOWED_DOMAINS:
                raise ModelRefusedError(
                    f"node {_short(node.op_type)} is in op domain {_short(node.domain)}: only "
                    f"{', '.join(ALLOWED_DOMAINS)} are allowed"
                )
    if model.functions:
        raise ModelRefusedError("the model defines its own functions: they are not accepted")
    if model.training_info:
        raise ModelRefusedError("the model carries training information: export it for inference")
    try:  # (6)
        onnx.checker.check_model(model, full_check=True)
    except (
        onnx.checker.ValidationError,
        onnx.shape_inference.InferenceError,
        ValueError,
    ) as exc:
        raise ModelRefusedError("the model fails the ONNX checker") from exc


def session_options(*, threads: int = DEFAULT_THREADS) -> Any:
    """onnxruntime session options for a model in the enclave.

    One intra-op pool of ``threads`` (no spinning: the enclave's cores are
    shared), sequential execution, no profiling, no optimized-model file, the
    ONNX format only (never an ORT flatbuffer), deterministic compute, and only
    fatal errors in onnxruntime's own log: it writes to the process's standard
    error, and a kernel's error can quote a value computed from the data (a
    shape taken from a feature), so nothing of the data reaches it.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError("threads must be a positive integer")
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = False
    options.optimized_model_filepath = ""
    options.use_deterministic_compute = True
    options.log_severity_level = LOG_FATAL_ONLY
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _session(model_bytes: bytes, *, threads: int) -> _InferenceSession:
    """(7) a CPU session built from the bytes, never from a file."""
    ort = _ort()
    options = session_options(threads=threads)
    try:
        session: _InferenceSession = ort.InferenceSession(
            bytes(model_bytes), options, providers=["CPUExecutionProvider"]
        )
    except _ort_errors(ort) as exc:
        raise ModelRefusedError("onnxruntime could not load the model") from exc
    return session


def _spec(what: str, arg: _NodeArg) -> TensorSpec:
    """(8) an input or output as a tensor spec; anything but a tensor is refused."""
    match = _TENSOR_TYPE.fullmatch(arg.type)
    if match is None or match[1] not in ELEMENT_TYPES:
        hint = (
            " (a classifier converted with ZipMap: convert with zipmap off)"
            if "map" in arg.type
            else ""
        )
        raise ModelRefusedError(f"{what} {_short(arg.name)} is not a tensor{hint}")
    try:
        return TensorSpec(arg.name, match[1], tuple(arg.shape))
    except ValueError as exc:
        raise ModelRefusedError(f"{what} {_short(arg.name)} has an unusable name or shape") from exc


def _describe(
    model: onnx.ModelProto, session: _InferenceSession, model_bytes: bytes
) -> ModelDescription:
    ort = _ort()
    opsets: dict[str, int] = {}
    for opset in model.opset_import:
        domain = _domain(opset.domain)
        if domain in opsets:
            raise ModelRefusedError(f"the model imports op domain {domain!r} twice")
        opsets[domain] = int(opset.version)
    try:
        return ModelDescription(
            sha256=hashlib.sha256(model_bytes).hexdigest(),
            size=len(model_bytes),
            ir_version=int(model.ir_version),
            opsets=tuple(sorted(opsets.items())),
            producer_name=str(model.producer_name)[:128],
            producer_version=str(model.producer_version)[:64],
            runtime_version=str(ort.__version__),
            inputs=tuple(_spec("input", a) for a in session.get_inputs()),
            outputs=tuple(_spec("output", a) for a in session.get_outputs()),
        )
    except ValueError as exc:
        raise ModelRefusedError(f"the model's inputs or outputs are unusable: {exc}") from exc


def _inspect(model_bytes: bytes, *, threads: int) -> tuple[ModelDescription, _InferenceSession]:
    _sniff(model_bytes)  # (1), (2)
    model = _parse(model_bytes)  # (3)
    _check_rules(model)  # (4), (5), (6)
    session = _session(model_bytes, threads=threads)  # (7)
    return _describe(model, session, bytes(model_bytes)), session  # (8)


def describe(model_bytes: bytes) -> ModelDescription:
    """Check ``model_bytes`` as the enclave will, and describe them for a manifest.

    The vendor calls this before signing; the enclave's :func:`load` runs the
    same checks and requires the same description.
    """
    description, _ = _inspect(model_bytes, threads=1)
    return description


def load(model_bytes: bytes, manifest: ModelManifest, *, threads: int = DEFAULT_THREADS) -> Session:
    """Load a model whose manifest was verified (:meth:`ModelManifest.verify`).

    ``threads`` bounds onnxruntime's intra-op pool (see :func:`session_options`).
    """
    digest = hashlib.sha256(model_bytes).hexdigest()
    if (digest, len(model_bytes)) != (manifest.model.sha256, manifest.model.size):  # (0)
        raise IntegrityError(
            "the model bytes do not match the signed manifest: "
            "they were modified, truncated or swapped"
        )
    actual, session = _inspect(model_bytes, threads=threads)  # (1)-(8)
    manifest.model.check_same(actual)  # (9)
    return Session(manifest, session)
