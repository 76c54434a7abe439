"""cleanroom: a confidential clean room.

The short names are the safe paths::

    from cleanroom import Party, Schema, seal_dataset, open_dataset

    bank = Party.create("bank")
    sealed = seal_dataset("cards.csv", schema=Schema.load("cards.schema.json"),
                          owner=bank, output="cards.sealed", name="cards")
    table = open_dataset("cards.sealed", bank)

    room = Client("http://127.0.0.1:8321", bank).room(room_id)   # a hosted room
    room.audit.verify()

Invariant: importing this package loads only :mod:`cleanroom.errors`. Every
other public name is loaded on first use (module ``__getattr__``), so that
``import cleanroom`` and the ``cleanroom`` command start fast; the SDK loads
httpx and pydantic, sealing loads pyarrow and DuckDB, only when asked for
(tests/test_cli_imports.py pins it).
"""

import importlib
from typing import TYPE_CHECKING, Any

from cleanroom.errors import (
    CleanroomError,
    IntegrityError,
    InvalidInputError,
    OperationalError,
    ValidationError,
)

if TYPE_CHECKING:
    from cleanroom.client import Client
    from cleanroom.datasets import Column, Schema
    from cleanroom.datasets.seal import decrypt_dataset, open_dataset, seal_dataset
    from cleanroom.identities import Party, PublicIdentity

# name -> the module that defines it, imported on first use
_LAZY = {
    "Client": "cleanroom.client",
    "Column": "cleanroom.datasets",
    "Schema": "cleanroom.datasets",
    "Party": "cleanroom.identities",
    "PublicIdentity": "cleanroom.identities",
    "decrypt_dataset": "cleanroom.datasets.seal",
    "open_dataset": "cleanroom.datasets.seal",
    "seal_dataset": "cleanroom.datasets.seal",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
