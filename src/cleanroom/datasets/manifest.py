"""Dataset manifests and sealed data keys (pure: documents in, objects out).

A sealed dataset is a directory::

    data.parquet         the rows, as encrypted Parquet under a fresh data key
    manifest.json        signed by the owner: name, schema, row count,
                         SHA-256 and size of data.parquet, key id, format version
    key.<fingerprint>.json
                         the data key, HPKE-sealed to one recipient (at first
                         only the owner), bound to the dataset name, key id and
                         ciphertext digest

The manifest never contains the key. The key id is a one-way hash of the key,
so whoever opens a sealed key can check it is the key the manifest names.

A model asset is published the same way (ADR 0023): ``data.parquet`` holds one
row of :data:`~cleanroom.datasets.schema.MODEL_SCHEMA` (the model's name and its
ONNX bytes) and the manifest carries the model manifest under ``model``
(signature, opsets, digest, onnxruntime version), covered by the owner's one
signature. A manifest has a ``model`` exactly when its schema is the model
schema, and a ``binary`` column appears in no other dataset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.crypto.hpke import SUITE_NAME, SealContext, seal
from cleanroom.datasets.schema import BINARY, MODEL_SCHEMA, Schema
from cleanroom.errors import DeserializationError, IntegrityError
from cleanroom.identities.identity import PublicIdentity, check_name
from cleanroom.models.manifest import ModelManifest, model_from_payload
from cleanroom.wire import WireModel, parse_model

MANIFEST_TYP = "cleanroom-dataset-manifest+jws"
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.parquet"
KEY_PURPOSE = "dataset-key"
FORMAT_VERSION = 1


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"cleanroom/key-id/v1\x00" + key).hexdigest()[:32]


def sealed_key_file(fingerprint: str) -> str:
    return f"key.{fingerprint[:16]}.json"


class _Owner(WireModel):
    name: StrictStr
    fingerprint: StrictStr


class _Ciphertext(WireModel):
    file: Literal["data.parquet"]
    sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: StrictInt = Field(ge=1)
    encryption: Literal["parquet-modular-encryption/AES_GCM_V1"]


class _ManifestWire(WireModel):
    format: Literal["cleanroom-dataset"]
    version: Literal[1]
    name: StrictStr
    owner: _Owner
    dataset_schema: dict[str, Any] = Field(alias="schema")
    rows: StrictInt = Field(ge=0)
    ciphertext: _Ciphertext
    key_id: StrictStr = Field(pattern=r"^[0-9a-f]{32}$")
    created_at: StrictStr
    model: dict[str, Any] | None = None


def check_asset(
    schema: Schema, model: ModelManifest | None, owner_fingerprint: str, rows: int = 1
) -> None:
    """A dataset is a model asset exactly when it carries a model manifest: then its
    schema is the model schema, it holds one row, and the model names the dataset's
    owner as vendor; otherwise no column is binary. Raises :class:`DeserializationError`."""
    if model is None:
        binary = [c.name for c in schema.columns if c.type == BINARY]
        if binary:
            raise DeserializationError(
                f"column {binary[0]!r} is binary: binary columns carry model assets only"
            )
        return
    if schema != MODEL_SCHEMA:
        raise DeserializationError("a model asset's schema must be the model schema")
    if rows != 1:
        raise DeserializationError("a model asset holds exactly one model")
    if model.vendor_fingerprint != owner_fingerprint:
        raise DeserializationError("a model asset's vendor must be the dataset's owner")


@dataclass(frozen=True)
class Manifest:
    name: str
    owner_name: str
    owner_fingerprint: str
    schema: Schema
    rows: int
    sha256: str
    size: int
    key_id: str
    created_at: str
    model: ModelManifest | None = None

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format": "cleanroom-dataset",
            "version": FORMAT_VERSION,
            "name": self.name,
            "owner": {"name": self.owner_name, "fingerprint": self.owner_fingerprint},
            "schema": self.schema.to_json(),
            "rows": self.rows,
            "ciphertext": {
                "file": DATA_FILE,
                "sha256": self.sha256,
                "bytes": self.size,
                "encryption": "parquet-modular-encryption/AES_GCM_V1",
            },
            "key_id": self.key_id,
            "created_at": self.created_at,
        }
        if self.model is not None:
            payload["model"] = self.model.payload()
        return payload

    def key_context(self) -> SealContext:
        """What the data key is sealed to: this dataset, this key, these bytes."""
        return SealContext(
            KEY_PURPOSE,
            {"dataset": self.name, "key_id": self.key_id, "ciphertext_sha256": self.sha256},
        )

    @classmethod
    def verify(cls, document: Any, owner: PublicIdentity) -> Manifest:
        """Verify ``document`` was signed by ``owner`` and parse it.

        (1) the signature verifies under the owner's key, for a manifest;
        (2) the manifest names that owner; (3) the payload is well formed.
        """
        payload = owner.verify(document, typ=MANIFEST_TYP)  # (1)
        wire = parse_model(_ManifestWire, payload, what="manifest")  # (3)
        if wire.owner.fingerprint != owner.fingerprint:  # (2)
            raise IntegrityError("manifest names a different owner than the one that signed it")
        schema = Schema.from_json(wire.dataset_schema)
        model = model_from_payload(wire.model) if wire.model is not None else None
        check_asset(schema, model, wire.owner.fingerprint, wire.rows)
        return cls(
            name=check_name(wire.name),
            owner_name=wire.owner.name,
            owner_fingerprint=wire.owner.fingerprint,
            schema=schema,
            rows=wire.rows,
            sha256=wire.ciphertext.sha256,
            size=wire.ciphertext.bytes,
            key_id=wire.key_id,
            created_at=wire.created_at,
            model=model,
        )


class _SealedKeyWire(WireModel):
    format: Literal["cleanroom-sealed-key"]
    version: Literal[1]
    suite: Literal["DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"]
    recipient: StrictStr
    key_id: StrictStr
    sealed: StrictStr


def seal_key(key: bytes, manifest: Manifest, recipient: PublicIdentity) -> dict[str, Any]:
    return {
        "format": "cleanroom-sealed-key",
        "version": 1,
        "suite": SUITE_NAME,
        "recipient": recipient.fingerprint,
        "key_id": manifest.key_id,
        "sealed": b64url_encode(seal(key, recipient.encryption_key, manifest.key_context())),
    }


def parse_sealed_key(document: Any) -> tuple[str, bytes]:
    """``(recipient fingerprint, sealed bytes)`` of a sealed-key document."""
    wire = parse_model(_SealedKeyWire, document, what="sealed key")
    return wire.recipient, b64url_decode(wire.sealed, what="sealed key")
