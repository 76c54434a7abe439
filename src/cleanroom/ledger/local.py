"""A ledger in a local data directory: the embedded default.

Layout (created on first use)::

    DIR/ledger.sqlite3      entries and tree heads (SQLite, WAL)
    DIR/service/            the ledger service's keystore and public identity

``database_url`` (``postgresql://...``) keeps entries in PostgreSQL instead;
the service key always stays in the data directory.
"""

from __future__ import annotations

from pathlib import Path

from cleanroom.errors import StorageError
from cleanroom.identities.keystore import IDENTITY_FILE, KEYSTORE_FILE, Party
from cleanroom.ledger.log import Ledger, TreeHeadPolicy
from cleanroom.ledger.sql import PostgresStore, SQLiteStore
from cleanroom.ledger.store import LedgerStore

SERVICE_DIR = "service"
DATABASE_FILE = "ledger.sqlite3"


def service_party(data_dir: Path) -> Party:
    """The ledger service's key, created on first use."""
    directory = Path(data_dir) / SERVICE_DIR
    if not (directory / KEYSTORE_FILE).exists():
        Party.create("ledger").save(directory)
    return Party.load(directory)


def service_identity_file(data_dir: Path) -> Path:
    return Path(data_dir) / SERVICE_DIR / IDENTITY_FILE


def open_store(
    data_dir: Path, database_url: str | None = None, *, schema: str = "cleanroom"
) -> LedgerStore:
    if database_url is None:
        return SQLiteStore(Path(data_dir) / DATABASE_FILE)
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url, schema=schema)
    raise StorageError("the database URL must start with postgresql://")


def open_ledger(
    data_dir: Path,
    *,
    database_url: str | None = None,
    schema: str = "cleanroom",
    policy: TreeHeadPolicy | None = None,
) -> Ledger:
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create data directory {data_dir}: {exc.strerror}") from exc
    store = open_store(data_dir, database_url, schema=schema)
    return Ledger(store, service_party(data_dir), policy=policy)
