"""Seal a dataset for its owner, and open it again: the dataset recipes.

``seal_dataset`` streams the input through schema validation into encrypted
Parquet under a fresh random 256-bit data key, then signs a manifest and seals
the key to the owner. It works in a hidden sibling directory and publishes the
result with one rename: on any error, nothing appears at the output path.

``open_dataset`` checks, before any decryption: (1) the manifest's signature
by the expected owner; (2) the ciphertext's size and SHA-256 against the
manifest; (3) the sealed key opens for this dataset, key id and ciphertext
digest; (4) the opened key's id matches the manifest. Only then is the data
decrypted, and (5) its row count and types are checked against the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from cleanroom.datasets.manifest import (
    DATA_FILE,
    MANIFEST_FILE,
    Manifest,
    check_asset,
    key_id_of,
    parse_sealed_key,
    seal_key,
    sealed_key_file,
)
from cleanroom.datasets.parquet import connect, read_encrypted, write_encrypted
from cleanroom.datasets.schema import MODEL_SCHEMA, Schema
from cleanroom.datasets.sources import open_source, plain_format, write_plain
from cleanroom.datasets.validate import BatchValidator
from cleanroom.errors import (
    DeserializationError,
    IntegrityError,
    OperationalError,
    StorageError,
    ValidationError,
)
from cleanroom.fs import atomic_directory, atomic_path
from cleanroom.identities.identity import PublicIdentity, check_name
from cleanroom.identities.keystore import Party
from cleanroom.models.manifest import ModelManifest
from cleanroom.progress import NoProgress, Progress
from cleanroom.wire import pretty_json, read_json_file


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SealedDataset:
    directory: Path
    manifest: Manifest

    def __repr__(self) -> str:
        m = self.manifest
        return f"SealedDataset(name={m.name!r}, rows={m.rows}, directory={str(self.directory)!r})"


def sha256_file(path: Path) -> tuple[str, int]:
    try:
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return digest, path.stat().st_size
    except FileNotFoundError as exc:
        raise StorageError(f"{path} does not exist") from exc


def seal_dataset(
    source: Any,
    *,
    schema: Schema,
    owner: Party,
    output: Path,
    name: str,
    progress: Progress | None = None,
    now: Callable[[], datetime] = _utcnow,
    rng: Callable[[int], bytes] = os.urandom,
    model: ModelManifest | None = None,
) -> SealedDataset:
    """Validate ``source`` against ``schema`` and write a sealed dataset to ``output``.

    ``source`` is a CSV or Parquet path, a ``pyarrow.Table``, a pandas or
    Polars DataFrame, a DuckDB relation or any Arrow stream (see
    :func:`cleanroom.datasets.sources.open_source`). Raises
    :class:`ValidationError` naming the row and column of the first bad value;
    ``output`` then does not exist.
    """
    check_name(name)
    try:
        check_asset(schema, model, owner.fingerprint)  # before any row is read
    except DeserializationError as exc:
        raise ValidationError(str(exc)) from exc
    progress = progress or NoProgress()
    output = Path(output)
    src = open_source(source)
    validator = BatchValidator(schema)
    validator.check_columns(src.names, src.types)
    failures: list[BaseException] = []

    def validated() -> Iterator[pa.RecordBatch]:
        seen = 0
        try:
            for batch in src.batches:
                checked = validator.validate(batch)
                position = src.position()
                progress.advance(position - seen)
                seen = position
                yield checked
        except BaseException as exc:
            failures.append(exc)
            raise

    key = rng(32)
    progress.start(f"Encrypting {src.description}", src.total, src.unit)
    with atomic_directory(output) as work:
        con = connect()
        try:
            reader = pa.RecordBatchReader.from_batches(schema.arrow_schema(), validated())
            write_encrypted(con, reader, work / DATA_FILE, key)
        except duckdb.Error as exc:
            if failures:
                raise failures[0] from None
            raise OperationalError(f"writing encrypted Parquet failed: {exc}") from exc
        finally:
            con.close()
        if validator.rows == 0:
            raise ValidationError("the input has no data rows")
        try:
            check_asset(schema, model, owner.fingerprint, validator.rows)
        except DeserializationError as exc:
            raise ValidationError(str(exc)) from exc
        digest, size = sha256_file(work / DATA_FILE)
        manifest = Manifest(
            name=name,
            owner_name=owner.name,
            owner_fingerprint=owner.fingerprint,
            schema=schema,
            rows=validator.rows,
            sha256=digest,
            size=size,
            key_id=key_id_of(key),
            created_at=now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            model=model,
        )
        signed = owner.sign_document(manifest.payload(), typ="cleanroom-dataset-manifest+jws")
        (work / MANIFEST_FILE).write_bytes(pretty_json(signed))
        sealed = seal_key(key, manifest, owner.identity)
        (work / sealed_key_file(owner.fingerprint)).write_bytes(pretty_json(sealed))
    return SealedDataset(output, manifest)


def seal_model(
    model_bytes: bytes,
    manifest: ModelManifest,
    *,
    owner: Party,
    output: Path,
    name: str,
    now: Callable[[], datetime] = _utcnow,
) -> SealedDataset:
    """Seal a model as a dataset (ADR 0023): one row of the model schema holding
    the ONNX bytes, the signed dataset manifest carrying ``manifest``."""
    return seal_dataset(
        model_table(model_bytes, manifest),
        schema=MODEL_SCHEMA,
        owner=owner,
        output=output,
        name=name,
        now=now,
        model=manifest,
    )


def model_table(model_bytes: bytes, manifest: ModelManifest) -> pa.Table:
    """The one row a model asset holds. The bytes must be the ones ``manifest``
    describes (build it with :func:`cleanroom.models.onnx.describe`, which runs the
    enclave's checks): nothing else is sealed under its name."""
    digest = hashlib.sha256(model_bytes).hexdigest()
    if (digest, len(model_bytes)) != (manifest.model.sha256, manifest.model.size):
        raise ValidationError("the model bytes are not the ones the model manifest describes")
    return pa.table(
        {"model": [manifest.name], "onnx": [bytes(model_bytes)]},
        schema=MODEL_SCHEMA.arrow_schema(),
    )


def load_manifest(directory: Path, owner: PublicIdentity) -> Manifest:
    """The dataset's manifest, verified as signed by ``owner``."""
    document = read_json_file(Path(directory) / MANIFEST_FILE, what="manifest")
    return Manifest.verify(document, owner)


def verify_ciphertext(directory: Path, manifest: Manifest) -> None:
    digest, size = sha256_file(Path(directory) / DATA_FILE)
    if size != manifest.size or digest != manifest.sha256:
        raise IntegrityError(
            f"{DATA_FILE} does not match the signed manifest: it was modified, truncated or swapped"
        )


def unseal_key(directory: Path, manifest: Manifest, party: Party) -> bytes:
    path = Path(directory) / sealed_key_file(party.fingerprint)
    if not path.exists():
        raise IntegrityError(f"no data key is sealed to {party.name} in {directory}")
    recipient, sealed = parse_sealed_key(read_json_file(path, what="sealed key"))
    if recipient != party.fingerprint:
        raise IntegrityError("the sealed key is for a different party")
    key = party.open_sealed(sealed, manifest.key_context())
    if key_id_of(key) != manifest.key_id:
        raise IntegrityError("the sealed key is not the key the manifest names")
    return key


def open_dataset(directory: Path, owner: Party) -> pa.Table:
    """Verify and decrypt a sealed dataset as its owner; returns the rows."""
    return _open(Path(directory), owner)[1]


def _open(directory: Path, owner: Party) -> tuple[Manifest, pa.Table]:
    manifest = load_manifest(directory, owner.identity)  # (1)
    verify_ciphertext(directory, manifest)  # (2)
    key = unseal_key(directory, manifest, owner)  # (3), (4)
    table = read_encrypted(directory / DATA_FILE, key)
    target = manifest.schema.arrow_schema()
    if table.num_rows != manifest.rows or table.schema.names != target.names:  # (5)
        raise IntegrityError("decrypted data does not match its manifest")
    return manifest, table.cast(target)


def decrypt_dataset(directory: Path, owner: Party, output: Path) -> Manifest:
    """Write the plaintext of a sealed dataset to a ``.csv`` or ``.parquet`` file."""
    output = Path(output)
    file_format = plain_format(output)
    manifest, table = _open(Path(directory), owner)
    with atomic_path(output) as tmp:
        write_plain(table, tmp, file_format)
    return manifest
