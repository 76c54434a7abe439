"""cleanroom: a confidential clean room.

The short names are the safe paths::

    from cleanroom import Party, Schema, seal_dataset, open_dataset

    bank = Party.create("bank")
    sealed = seal_dataset("cards.csv", schema=Schema.load("cards.schema.json"),
                          owner=bank, output="cards.sealed", name="cards")
    table = open_dataset("cards.sealed", bank)

    room = Client("http://127.0.0.1:8321", bank).room(room_id)   # a hosted room
    room.audit.verify()
"""

import importlib
from typing import TYPE_CHECKING, Any

from cleanroom.client import Client
from cleanroom.datasets import Column, Schema
from cleanroom.errors import (
    CleanroomError,
    IntegrityError,
    InvalidInputError,
    OperationalError,
    ValidationError,
)
from cleanroom.identities import Party, PublicIdentity

if TYPE_CHECKING:
    from cleanroom.datasets.seal import decrypt_dataset, open_dataset, seal_dataset

# Sealing runs DuckDB: loaded on first use, so ``import cleanroom.client`` (which
# imports this package first) stays light for code that only governs or audits.
_LAZY = frozenset({"decrypt_dataset", "open_dataset", "seal_dataset"})


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("cleanroom.datasets.seal"), name)


__version__ = "0.1.0"

__all__ = [
    "CleanroomError",
    "Client",
    "Column",
    "IntegrityError",
    "InvalidInputError",
    "OperationalError",
    "Party",
    "PublicIdentity",
    "Schema",
    "ValidationError",
    "decrypt_dataset",
    "open_dataset",
    "seal_dataset",
]
