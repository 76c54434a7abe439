"""Encrypted datasets: declared schemas, validation, sealing and opening."""

from cleanroom.datasets.manifest import Manifest
from cleanroom.datasets.schema import Column, Schema
from cleanroom.datasets.seal import (
    SealedDataset,
    decrypt_dataset,
    load_manifest,
    open_dataset,
    seal_dataset,
)

__all__ = [
    "Column",
    "Manifest",
    "Schema",
    "SealedDataset",
    "decrypt_dataset",
    "load_manifest",
    "open_dataset",
    "seal_dataset",
]
