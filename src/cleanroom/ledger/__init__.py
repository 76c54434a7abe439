"""The tamper-evident ledger: RFC 9162 Merkle log of signed statements.

* :class:`Ledger` appends validated statements and signs tree heads.
* :func:`verify_export` / :func:`verify_receipt` check everything offline.
* :class:`TreeHeadTracker` detects forks and rollbacks across sessions.
"""

from cleanroom.ledger.entries import Entry, Receipt, TreeHead, verify_receipt
from cleanroom.ledger.local import open_ledger
from cleanroom.ledger.log import Ledger, TreeHeadPolicy
from cleanroom.ledger.sql import PostgresStore, SQLiteStore
from cleanroom.ledger.verify import TreeHeadTracker, VerifiedLedger, check_extends, verify_export

__all__ = [
    "Entry",
    "Ledger",
    "PostgresStore",
    "Receipt",
    "SQLiteStore",
    "TreeHead",
    "TreeHeadPolicy",
    "TreeHeadTracker",
    "VerifiedLedger",
    "check_extends",
    "open_ledger",
    "verify_export",
    "verify_receipt",
]
