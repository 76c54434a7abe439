"""Model manifests (pure: documents in, objects out; no ONNX package needed).

A model vendor publishes a model like a data owner publishes a dataset: the
model bytes (ONNX, the only executable model format inside the enclave) and a
manifest the vendor signs::

    {"format": "cleanroom-model", "version": 1,
     "name": "churn", "model_version": "2.1.0",
     "vendor": {"name": "acme", "fingerprint": "..."},
     "created_at": "2026-01-02T03:04:05Z",
     "features": ["age", "balance", ...],
     "model": {"format": "onnx", "sha256": "...", "bytes": 5307, "ir_version": 8,
               "opsets": {"ai.onnx": 17, "ai.onnx.ml": 3},
               "producer": {"name": "skl2onnx", "version": "1.20.0"},
               "checked_with": {"runtime": "onnxruntime", "version": "1.32.0"},
               "inputs": [{"name": "features", "type": "float", "shape": ["batch", 6]}],
               "outputs": [{"name": "label", "type": "int64", "shape": ["batch"]},
                           {"name": "probabilities", "type": "float",
                            "shape": ["batch", 2]}]}}

It is signed like every other document (:mod:`cleanroom.crypto.documents`:
RFC 8785 canonical JSON under a detached JWS), with its own ``typ``.

Invariants: the opsets name only the allowed domains (``ai.onnx``,
``ai.onnx.ml``); inputs and outputs are tensors of a known element type, with
unique names, whose dimensions are fixed sizes (``6``), symbolic names
(``"batch"``) or unknown (``null``); ``features`` names the columns of the one
2-D input, in order, or is empty for a model that is not scored from a table.
``model`` is derived from the bytes alone (see :mod:`cleanroom.models.onnx`),
so the enclave recomputes it and compares, rather than trusting it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from cleanroom.crypto.canonical import canonical_digest, canonical_json
from cleanroom.errors import DeserializationError, IntegrityError, ModelRefusedError
from cleanroom.identities.identity import PublicIdentity, check_name
from cleanroom.identities.keystore import Party
from cleanroom.wire import WireModel, parse_model

MODEL_MANIFEST_TYP = "cleanroom-model-manifest+jws"
FORMAT_VERSION = 1

# The op domains a model may use. "" is ONNX's spelling of the default domain,
# normalised to "ai.onnx" in manifests. Everything else (com.microsoft contrib
# ops, a vendor's custom ops) would need native code the enclave did not measure.
ALLOWED_DOMAINS: tuple[str, ...] = ("ai.onnx", "ai.onnx.ml")
Domain = Literal["ai.onnx", "ai.onnx.ml"]

# ONNX TensorProto element types, by the names onnxruntime reports: "tensor(<name>)"
ELEMENT_TYPES = frozenset(
    {
        "float",
        "double",
        "float16",
        "bfloat16",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "string",
    }
)

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODEL_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_TENSOR_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

Dim = int | str | None


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise DeserializationError(
            f"model name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_model_version(version: str) -> str:
    if not isinstance(version, str) or not _MODEL_VERSION.fullmatch(version):
        raise DeserializationError(
            f"model version {version!r} is invalid: use 1-64 letters, digits, '.', '+', "
            "'_' or '-', starting with a letter or digit"
        )
    return version


def _shape_text(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the graph: a tensor's name, element type and shape."""

    name: str
    element_type: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if not _TENSOR_NAME.fullmatch(self.name):
            raise ValueError("a tensor name must be 1-256 printable characters")
        if self.element_type not in ELEMENT_TYPES:
            raise ValueError(f"unknown tensor element type {self.element_type!r}")
        for dim in self.shape:
            # bool is an int: refuse it explicitly
            if isinstance(dim, bool) or (isinstance(dim, int) and dim < 0):
                raise ValueError(f"tensor {self.name!r} has an invalid dimension {dim!r}")
            if isinstance(dim, str) and not _DIM_NAME.fullmatch(dim):
                raise ValueError(f"tensor {self.name!r} has an invalid dimension name {dim!r}")

    def describe(self) -> str:
        return f"{self.name!r} ({self.element_type} {_shape_text(self.shape)})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.element_type, "shape": list(self.shape)}


def _check_tensors(what: str, tensors: tuple[TensorSpec, ...]) -> None:
    names = [t.name for t in tensors]
    if not names:
        raise ValueError(f"a model has at least one {what}")
    if len(set(names)) != len(names):
        raise ValueError(f"the model's {what}s have duplicate names")


@dataclass(frozen=True)
class ModelDescription:
    """What the model bytes themselves say: digest, opsets, producer, signature.

    Built by :func:`cleanroom.models.onnx.describe`; the enclave rebuilds it from
    the bytes it loads and requires it to equal the signed one (:meth:`check_same`).
    """

    sha256: str
    size: int
    ir_version: int
    opsets: tuple[tuple[str, int], ...]
    producer_name: str
    producer_version: str
    runtime_version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        if self.size < 1 or self.ir_version < 1:
            raise ValueError("a model has at least one byte and an IR version of at least 1")
        domains = [d for d, _ in self.opsets]
        if not domains or len(set(domains)) != len(domains):
            raise ValueError("opsets must name each domain once, and at least one")
        if not set(domains) <= set(ALLOWED_DOMAINS):
            raise ValueError(f"opsets name a domain outside {', '.join(ALLOWED_DOMAINS)}")
        if list(self.opsets) != sorted(self.opsets):
            raise ValueError("opsets must be sorted by domain")
        _check_tensors("input", self.inputs)
        _check_tensors("output", self.outputs)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ModelRefusedError(f"the model has no output {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "onnx",
            "sha256": self.sha256,
            "bytes": self.size,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "producer": {"name": self.producer_name, "version": self.producer_version},
            "checked_with": {"runtime": "onnxruntime", "version": self.runtime_version},
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    def check_same(self, actual: ModelDescription) -> None:
        """Raise unless ``actual`` (rebuilt from the loaded bytes) is this model.

        (1) the bytes: digest and size, an :class:`IntegrityError`;
        (2) the signature: the same inputs and outputs, in order, with the same
        types and shapes; (3) the same opsets, IR version and producer. The
        onnxruntime version the vendor checked with may differ from the
        enclave's: the signature check (2) is what must hold under both.
        """
        if (actual.sha256, actual.size) != (self.sha256, self.size):  # (1)
            raise IntegrityError(
                "the model bytes do not match the signed manifest: "
                "they were modified, truncated or swapped"
            )
        for what, want, got in (
            ("input", self.inputs, actual.inputs),
            ("output", self.outputs, actual.outputs),
        ):  # (2)
            _check_signature(what, want, got)
        if actual.opsets != self.opsets or actual.ir_version != self.ir_version:  # (3)
            raise ModelRefusedError("the model's opsets or IR version differ from its manifest's")
        if (actual.producer_name, actual.producer_version) != (
            self.producer_name,
            self.producer_version,
        ):
            raise ModelRefusedError("the model's producer differs from its manifest's")


def _check_signature(what: str, want: tuple[TensorSpec, ...], got: tuple[TensorSpec, ...]) -> None:
    want_names = [t.name for t in want]
    got_names = [t.name for t in got]
    missing = [n for n in want_names if n not in got_names]
    extra = [n for n in got_names if n not in want_names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the manifest declares {what} {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"the model has {what} {', '.join(map(repr, extra))}")
        raise ModelRefusedError(
            f"the model's {what}s do not match its manifest: {'; '.join(parts)}"
        )
    if want_names != got_names:
        raise ModelRefusedError(f"the model's {what}s are in a different order than its manifest's")
    for w, g in zip(want, got, strict=True):
        if w != g:
            raise ModelRefusedError(
                f"{what} {g.describe()} does not match the manifest's {w.describe()}"
            )


def _features_problem(features: tuple[str, ...], inputs: tuple[TensorSpec, ...]) -> str | None:
    if not features:
        return None
    if len(set(features)) != len(features) or not all(isinstance(f, str) and f for f in features):
        return "features must be distinct, non-empty column names"
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        return "features need exactly one input, of rank 2 (batch, features)"
    width = inputs[0].shape[1]
    if isinstance(width, int) and width != len(features):
        return f"the input has {width} features, the manifest names {len(features)} columns"
    return None


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    vendor_name: str
    vendor_fingerprint: str
    features: tuple[str, ...]
    model: ModelDescription
    created_at: str

    def __post_init__(self) -> None:
        check_model_name(self.name)
        check_model_version(self.version)
        problem = _features_problem(self.features, self.model.inputs)
        if problem is not None:
            raise ValueError(problem)

    def __repr__(self) -> str:
        return (
            f"ModelManifest(name={self.name!r}, version={self.version!r}, "
            f"sha256={self.model.sha256[:16]}...)"
        )

    def payload(self) -> dict[str, Any]:
        return {
            "format": "cleanroom-model",
            "version": FORMAT_VERSION,
            "name": self.name,
            "model_version": self.version,
            "vendor": {"name": self.vendor_name, "fingerprint": self.vendor_fingerprint},
            "created_at": self.created_at,
            "features": list(self.features),
            "model": self.model.to_json(),
        }

    def canonical(self) -> bytes:
        """The RFC 8785 bytes the vendor's signature covers."""
        return canonical_json(self.payload())

    def digest(self) -> str:
        """SHA-256 of :meth:`canonical`: how a proposal or a job names this manifest."""
        return canonical_digest(self.payload())

    def sign(self, vendor: Party) -> dict[str, Any]:
        """The signed manifest document; ``vendor`` must be the party it names."""
        if vendor.identity.fingerprint != self.vendor_fingerprint:
            raise ValueError("a manifest is signed by the vendor it names")
        return vendor.sign_document(self.payload(), typ=MODEL_MANIFEST_TYP)

    @classmethod
    def verify(cls, document: Any, vendor: PublicIdentity) -> ModelManifest:
        """Verify ``document`` was signed by ``vendor`` and parse it.

        (1) the signature verifies under the vendor's key, for a model manifest;
        (2) the manifest names that vendor; (3) the payload is well formed and
        meets the invariants above.
        """
        payload = vendor.verify(document, typ=MODEL_MANIFEST_TYP)  # (1)
        manifest = model_from_payload(payload)  # (3)
        if manifest.vendor_fingerprint != vendor.fingerprint:  # (2)
            raise IntegrityError(
                "model manifest names a different vendor than the one that signed it"
            )
        return manifest


def model_from_payload(payload: Any) -> ModelManifest:
    """Parse a model manifest's payload whose signature was checked by the caller
    (its own JWS, or the dataset manifest that carries it); raises
    :class:`DeserializationError`."""
    return _from_wire(parse_model(_ManifestWire, payload, what="model manifest"))


# -- wire models (parse once, at the edge) ---------------------------------------

_DimWire = StrictInt | StrictStr | None


class _TensorWire(WireModel):
    name: StrictStr
    type: StrictStr
    shape: list[_DimWire] = Field(max_length=32)


class _Producer(WireModel):
    name: StrictStr = Field(max_length=128)
    version: StrictStr = Field(max_length=64)


class _CheckedWith(WireModel):
    runtime: Literal["onnxruntime"]
    version: StrictStr = Field(max_length=64)


class _ModelWire(WireModel):
    format: Literal["onnx"]
    sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: StrictInt = Field(ge=1)
    ir_version: StrictInt = Field(ge=1)
    opsets: dict[Domain, StrictInt]
    producer: _Producer
    checked_with: _CheckedWith
    inputs: list[_TensorWire] = Field(min_length=1, max_length=1024)
    outputs: list[_TensorWire] = Field(min_length=1, max_length=1024)


class _Vendor(WireModel):
    name: StrictStr
    fingerprint: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")


class _ManifestWire(WireModel):
    format: Literal["cleanroom-model"]
    version: Literal[1]
    name: StrictStr
    model_version: StrictStr
    vendor: _Vendor
    created_at: StrictStr
    features: list[StrictStr] = Field(max_length=100_000)
    model: _ModelWire


def _from_wire(wire: _ManifestWire) -> ModelManifest:
    m = wire.model
    try:
        description = ModelDescription(
            sha256=m.sha256,
            size=m.bytes,
            ir_version=m.ir_version,
            opsets=tuple(sorted(m.opsets.items())),
            producer_name=m.producer.name,
            producer_version=m.producer.version,
            runtime_version=m.checked_with.version,
            inputs=tuple(TensorSpec(t.name, t.type, tuple(t.shape)) for t in m.inputs),
            outputs=tuple(TensorSpec(t.name, t.type, tuple(t.shape)) for t in m.outputs),
        )
        return ModelManifest(
            name=check_model_name(wire.name),
            version=check_model_version(wire.model_version),
            vendor_name=check_name(wire.vendor.name),
            vendor_fingerprint=wire.vendor.fingerprint,
            features=tuple(wire.features),
            model=description,
            created_at=wire.created_at,
        )
    except ValueError as exc:
        raise DeserializationError(f"model manifest is invalid: {exc}") from exc
