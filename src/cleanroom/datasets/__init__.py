"""Encrypted datasets: declared schemas, validation, sealing and opening."""

import importlib
from typing import TYPE_CHECKING, Any

from cleanroom.datasets.manifest import Manifest
from cleanroom.datasets.schema import Column, Schema

if TYPE_CHECKING:
    from cleanroom.datasets.seal import (
        SealedDataset,
        decrypt_dataset,
        load_manifest,
        open_dataset,
        seal_dataset,
        seal_model,
    )

# Sealing and opening run DuckDB: loaded on first use, so that reading a schema or
# a manifest (the SDK, the governance rules) does not load the engine.
_LAZY = frozenset(
    {
        "SealedDataset",
        "decrypt_dataset",
        "load_manifest",
        "open_dataset",
        "seal_dataset",
        "seal_model",
    }
)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("cleanroom.datasets.seal"), name)


__all__ = [
    "Column",
    "Manifest",
    "Schema",
    "SealedDataset",
    "decrypt_dataset",
    "load_manifest",
    "open_dataset",
    "seal_dataset",
    "seal_model",
]
