"""SQL ledger stores: SQLite (the embedded default) and PostgreSQL.

Both keep three tables: ``rooms`` (room, size), ``entries`` (room, seq, time,
data, leaf, digest) and ``tree_heads``. An append moves ``rooms.size`` from
the size the writer expects to the new size in the same transaction as the
inserts, so two writers can never interleave: the second finds the size
moved and fails before anything becomes visible.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed append survives
a crash of the process or the machine. PostgreSQL commits synchronously.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cleanroom.errors import GovernanceError, StorageError
from cleanroom.ledger.store import StoredEntry, StoredHead

_DDL = """
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, size BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    room TEXT NOT NULL, seq BIGINT NOT NULL, time BIGINT NOT NULL,
    data {blob} NOT NULL, leaf {blob} NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (room, seq), UNIQUE (room, digest)
);
CREATE TABLE IF NOT EXISTS tree_heads (
    id {serial} PRIMARY KEY, room TEXT NOT NULL, size BIGINT NOT NULL,
    time BIGINT NOT NULL, token TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tree_heads_room ON tree_heads (room, id);
"""


class _SQLStore:
    """Shared logic; subclasses provide a DB-API connection and its dialect."""

    _mark = "?"
    _integrity: tuple[type[BaseException], ...] = ()
    _failure: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN")

    def _write(
        self,
        room: str,
        entries: Sequence[StoredEntry],
        *,
        create: bool,
        head: StoredHead | None = None,
    ) -> None:
        if not entries:
            return
        with self._lock:
            cursor = self._conn().cursor()
            try:
                self._begin(cursor)
                if create:
                    cursor.execute(
                        self._sql("INSERT INTO rooms (room, size) VALUES (?, ?)"),
                        (room, len(entries)),
                    )
                else:
                    self._advance(cursor, room, entries)
                cursor.executemany(
                    self._sql(
                        "INSERT INTO entries (room, seq, time, data, leaf, digest) "
                        "VALUES (?, ?, ?, ?, ?, ?)"
                    ),
                    [(room, e.seq, e.time, e.data, e.leaf, e.digest) for e in entries],
                )
                if head is not None:
                    cursor.execute(
                        self._sql(
                            "INSERT INTO tree_heads (room, size, time, token) VALUES (?, ?, ?, ?)"
                        ),
                        (room, head.size, head.time, head.token),
                    )
                cursor.execute("COMMIT")
            except BaseException as exc:
                self._rollback(cursor)
                if isinstance(exc, self._integrity):
                    what = (
                        "a room with this id already exists"
                        if create
                        else ("statement was already recorded (replay)")
                    )
                    raise GovernanceError(what) from exc
                if isinstance(exc, self._failure):
                    raise StorageError(f"ledger store write failed: {exc}") from exc
                raise
            finally:
                cursor.close()

    def _rollback(self, cursor: Any) -> None:
        """Roll back if a transaction is open; never mask the error being handled."""
        with contextlib.suppress(*self._failure):
            cursor.execute("ROLLBACK")

    def _advance(self, cursor: Any, room: str, entries: Sequence[StoredEntry]) -> None:
        """Move the room's size from the writer's expectation, or fail the transaction."""
        cursor.execute(
            self._sql("UPDATE rooms SET size = size + ? WHERE room = ? AND size = ?"),
            (len(entries), room, entries[0].seq),
        )
        if cursor.rowcount != 1:
            raise StorageError(
                f"room {room[:12]}... does not exist or another writer appended first"
            )

    def create_room(self, room: str, first: StoredEntry) -> None:
        if first.seq != 0:
            raise ValueError("a room starts at seq 0")
        self._write(room, [first], create=True)

    def append(
        self, room: str, entries: Sequence[StoredEntry], head: StoredHead | None = None
    ) -> None:
        if not entries:
            return
        first = entries[0].seq
        if [e.seq for e in entries] != list(range(first, first + len(entries))):
            raise ValueError("entries of one append must be consecutive")
        self._write(room, entries, create=False, head=head)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                cursor = self._conn().cursor()
                cursor.execute(self._sql(sql), params)
                rows = cursor.fetchall()
                cursor.close()
                self._end_read()
            except self._failure as exc:
                raise StorageError(f"ledger store read failed: {exc}") from exc
        return list(rows)

    def _end_read(self) -> None:
        return None

    def size(self, room: str) -> int:
        rows = self._query("SELECT size FROM rooms WHERE room = ?", (room,))
        return int(rows[0][0]) if rows else 0

    def entries(self, room: str, start: int = 0, end: int | None = None) -> Iterator[StoredEntry]:
        while end is None or start < end:
            batch = 10_000 if end is None else min(10_000, end - start)
            rows = self._query(
                "SELECT seq, time, data, leaf, digest FROM entries WHERE room = ? AND seq >= ? "
                "ORDER BY seq LIMIT ?",
                (room, start, batch),
            )
            for seq, time, data, leaf, digest in rows:
                yield StoredEntry(int(seq), int(time), bytes(data), bytes(leaf), str(digest))
            if len(rows) < batch:
                return
            start = int(rows[-1][0]) + 1

    def rooms(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT room FROM rooms ORDER BY room", ())]

    def add_tree_head(self, room: str, size: int, time: int, token: str) -> None:
        with self._lock:
            cursor = self._conn().cursor()
            try:
                self._begin(cursor)
                cursor.execute(
                    self._sql(
                        "INSERT INTO tree_heads (room, size, time, token) VALUES (?, ?, ?, ?)"
                    ),
                    (room, size, time, token),
                )
                cursor.execute("COMMIT")
            except self._failure as exc:
                self._rollback(cursor)
                raise StorageError(f"ledger store write failed: {exc}") from exc
            finally:
                cursor.close()

    def tree_heads(self, room: str) -> list[str]:
        return [
            str(r[0])
            for r in self._query("SELECT token FROM tree_heads WHERE room = ? ORDER BY id", (room,))
        ]


class SQLiteStore(_SQLStore):
    """The embedded default: one SQLite file, WAL, fully synchronous commits."""

    _integrity = (sqlite3.IntegrityError,)
    _failure = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_DDL.format(blob="BLOB", serial="INTEGER"))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open ledger database {path}: {exc}") from exc

    def _conn(self) -> Any:
        return self._db

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        with self._lock:
            self._db.close()


_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresStore(_SQLStore):
    """PostgreSQL through psycopg 3; tables live in their own schema."""

    _mark = "%s"

    def __init__(self, url: str, *, schema: str = "cleanroom") -> None:
        try:
            import psycopg  # noqa: PLC0415 - only needed when PostgreSQL is chosen
        except ModuleNotFoundError as exc:
            raise StorageError(
                "a PostgreSQL ledger needs psycopg: pip install 'confidential-cleanroom[postgres]'"
            ) from exc

        super().__init__()
        if not _SCHEMA.fullmatch(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self._integrity = (psycopg.errors.UniqueViolation,)
        self._failure = (psycopg.Error,)
        try:
            self._db = psycopg.connect(url, autocommit=True)
            self._db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self._db.execute(f'SET search_path TO "{schema}"')
            for statement in _DDL.format(blob="BYTEA", serial="BIGSERIAL").split(";"):
                if statement.strip():
                    self._db.execute(statement)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open PostgreSQL ledger store: {exc}") from exc

    def _conn(self) -> Any:
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()
