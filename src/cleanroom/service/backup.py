"""A consistent copy of a service's data directory, taken while it runs.

``python -m cleanroom.service.backup DATA_DIR BACKUP_DIR`` (see docs/deploy.md).
To restore, copy ``BACKUP_DIR`` to the data directory of a stopped service.

What is copied, in this order, and why the order makes the copy consistent:

1. ``service/``: the service key (its keystore, unencrypted on disk, and its
   public identity). Without it a restored ledger's tree heads cannot be
   extended, and members' clients refuse another key.
2. ``ledger.sqlite3`` through SQLite's online backup API: a snapshot of one
   committed state, taken while the service keeps writing (never a byte copy
   of a database in WAL mode, which can be torn). With PostgreSQL the ledger is
   in the database: back it up there (``pg_dump``); this copies the rest.
3. ``blobs/`` and ``results/``: content-addressed files published by one
   rename and never changed, so every blob the snapshot's ledger names that
   existed then exists now, and is copied. Partial uploads (hidden
   ``.upload-*`` files) are skipped. A blob uploaded after the snapshot is
   copied too, harmlessly: nothing in the copy's ledger reads it.
4. ``nonces.sqlite3`` (the replay window) and ``checks.sqlite3`` (a cache of
   policy check outcomes), through the backup API as well.

``jobs/`` (the logs of past job processes) is left out. The copy is made in a
new directory (mode 0700); an existing one is refused, so a backup never
overwrites another.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from cleanroom.errors import CleanroomError, StorageError

SERVICE_DIR = "service"
DATABASES = ("ledger.sqlite3", "nonces.sqlite3", "checks.sqlite3")
BLOB_DIRS = ("blobs", "results")


def backup(data_dir: Path, destination: Path) -> list[str]:
    """Copy ``data_dir`` to the new directory ``destination``; the names copied."""
    data_dir, destination = Path(data_dir), Path(destination)
    if not (data_dir / SERVICE_DIR).is_dir():
        raise StorageError(f"{data_dir} is not a cleanroom data directory (no {SERVICE_DIR}/)")
    if destination.exists():
        raise StorageError(f"{destination} exists: a backup goes to a new directory")
    # built beside its final place and renamed into it once complete: a failed or
    # interrupted backup never looks like a backup
    partial = destination.with_name(destination.name + ".partial")
    try:
        partial.mkdir(mode=0o700, parents=True, exist_ok=False)
    except FileExistsError as exc:
        raise StorageError(f"{partial} exists: remove it (a backup that did not finish)") from exc
    except OSError as exc:
        raise StorageError(f"cannot create {partial}: {exc.strerror}") from exc
    copied = []
    try:
        # (1) the service key first: without it nothing else can be served
        shutil.copytree(data_dir / SERVICE_DIR, partial / SERVICE_DIR)
        copied.append(SERVICE_DIR)
        # (2) the ledger, at one committed state, before the blobs it names
        copied += [n for n in DATABASES[:1] if _snapshot(data_dir / n, partial / n)]
        # (3) written once by rename, never changed: what the snapshot names is here
        for name in BLOB_DIRS:
            if (data_dir / name).is_dir():
                shutil.copytree(data_dir / name, partial / name, ignore=_partial_uploads)
                copied.append(name)
        # (4) the replay window and the check memo
        copied += [n for n in DATABASES[1:] if _snapshot(data_dir / n, partial / n)]
        partial.rename(destination)
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise StorageError(f"the backup to {destination} failed: {exc}") from exc
    return copied


def _snapshot(source: Path, target: Path) -> bool:
    """SQLite's online backup of ``source`` into ``target`` (False: no such file)."""
    if not source.is_file():
        return False
    # read-only: the backup must never create, migrate or write the live database
    with (
        closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as live,
        closing(sqlite3.connect(target)) as copy,
    ):
        live.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    target.chmod(0o600)
    return True


def _partial_uploads(_: str, names: list[str]) -> set[str]:
    return {n for n in names if n.startswith(".upload-")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cleanroom.service.backup",
        description="Copy a cleanroom service's data directory consistently, while it runs.",
    )
    parser.add_argument("data_dir", type=Path, help="the service's data directory")
    parser.add_argument("destination", type=Path, help="a new directory for the copy")
    args = parser.parse_args(argv)
    try:
        copied = backup(args.data_dir, args.destination)
    except CleanroomError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - a command's output
        return 3
    print(f"backed up {', '.join(copied)} to {args.destination}")  # noqa: T201
    if "ledger.sqlite3" not in copied:
        print(  # noqa: T201
            "note: no ledger.sqlite3 here: if the ledger is in PostgreSQL, back it up with "
            "pg_dump as well",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
