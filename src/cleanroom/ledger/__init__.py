"""The tamper-evident ledger: RFC 9162 Merkle log of signed statements.

* :class:`Ledger` appends validated statements and signs tree heads.
* :func:`verify_export` / :func:`verify_receipt` check everything offline.
* :class:`TreeHeadTracker` detects forks and rollbacks across sessions.
"""

import importlib
from typing import TYPE_CHECKING, Any

from cleanroom.ledger.entries import Entry, Receipt, TreeHead, verify_receipt
from cleanroom.ledger.heads import FileHeadStore, MemoryHeadStore, TreeHeadTracker, load_export
from cleanroom.ledger.verify import VerifiedLedger, check_extends, verify_export

if TYPE_CHECKING:
    from cleanroom.ledger.local import open_ledger
    from cleanroom.ledger.log import Ledger, TreeHeadPolicy
    from cleanroom.ledger.sql import PostgresStore, SQLiteStore

# The writer and its stores load on first use: a verifier (the SDK, an auditor)
# that imports this package never loads the SQL drivers or the service's side.
_LAZY = {
    "Ledger": "cleanroom.ledger.log",
    "PostgresStore": "cleanroom.ledger.sql",
    "SQLiteStore": "cleanroom.ledger.sql",
    "TreeHeadPolicy": "cleanroom.ledger.log",
    "open_ledger": "cleanroom.ledger.local",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Entry",
    "FileHeadStore",
    "Ledger",
    "MemoryHeadStore",
    "PostgresStore",
    "Receipt",
    "SQLiteStore",
    "TreeHead",
    "TreeHeadPolicy",
    "TreeHeadTracker",
    "VerifiedLedger",
    "check_extends",
    "load_export",
    "open_ledger",
    "verify_export",
    "verify_receipt",
]
