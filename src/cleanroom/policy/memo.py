"""The service's memo of output-privacy check outcomes, kept across restarts.

The service folds every room's whole history when it starts, and folding
re-runs the policy check of every analysis ever proposed: parsing up to
16 KiB of SQL each. The check is a pure function of the SQL text, the inputs'
schemas, rules and owners' approval, and the DP specification; this memo
keeps its outcome (the SQL to run, or the refusal's text) under a digest of
all of them and of the code that checks (``namespace``: :func:`check_code`,
the package's measurement and the SQL engines' versions), in a SQLite file.

Only the service's ledger uses it, for its own view (``Ledger.memo``, set by
``cleanroom serve``; the states it folds carry it). Enclaves, owners' key
agents, the key broker and auditors check afresh, so a memo the operator
edits changes nothing anyone else accepts.
"""

from __future__ import annotations

import sqlite3
import threading
from importlib import metadata
from pathlib import Path


def check_code() -> str:
    """What the check's outcome depends on besides its inputs: this package's code
    and the engines it parses and rewrites with."""
    from cleanroom.attestation.virtual import measure  # noqa: PLC0415

    engines = ",".join(f"{name}={_version(name)}" for name in ("sqlglot", "opendp", "duckdb"))
    return f"{measure()};{engines}"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


class CheckMemo:
    def __init__(self, path: Path, namespace: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outcomes "
            "(key TEXT PRIMARY KEY, ok INTEGER NOT NULL, value TEXT NOT NULL)"
        )
        self._namespace = namespace
        self._lock = threading.Lock()

    def _key(self, digest: str) -> str:
        return f"{self._namespace}:{digest}"

    def get(self, digest: str) -> tuple[bool, str] | None:
        """(True, SQL to run) or (False, refusal) for a check seen before, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT ok, value FROM outcomes WHERE key = ?", (self._key(digest),)
            ).fetchone()
        return (bool(row[0]), str(row[1])) if row is not None else None

    def put(self, digest: str, *, ok: bool, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO outcomes (key, ok, value) VALUES (?, ?, ?)",
                (self._key(digest), int(ok), value),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
