"""One contract, every ledger store: SQLite (embedded) and PostgreSQL.

PostgreSQL tests use the server at CLEANROOM_TEST_POSTGRES_URL (default:
127.0.0.1:5432, database ``test``) in a fresh schema per test. Where no server
answers they skip with the reason, unless CLEANROOM_REQUIRE_POSTGRES=1 (as in
CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom import Party
from cleanroom.errors import GovernanceError, StorageError
from cleanroom.ledger import Ledger, PostgresStore, SQLiteStore, verify_export
from cleanroom.ledger.merkle import leaf_hash
from cleanroom.ledger.store import LedgerStore, StoredEntry
from tests.rooms import Clock, RoomFixture

POSTGRES_URL = os.environ.get(
    "CLEANROOM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ROOM = "ab" * 16


def _postgres_available() -> str | None:
    import psycopg  # noqa: PLC0415

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL server at {POSTGRES_URL}: {str(exc).strip().splitlines()[0]}"
    return None


class Stores:
    """Opens stores of one kind; ``reopen`` gives a fresh connection to the same data."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.schema = f"cleanroom_test_{secrets.token_hex(6)}"
        self.opened: list[LedgerStore] = []

    def open(self) -> LedgerStore:
        store: LedgerStore = (
            SQLiteStore(self.tmp_path / "ledger.sqlite3")
            if self.kind == "sqlite"
            else PostgresStore(POSTGRES_URL, schema=self.schema)
        )
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.kind == "postgres":
            import psycopg  # noqa: PLC0415

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "postgres":
        reason = _postgres_available()
        if reason is not None:
            if os.environ.get("CLEANROOM_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"CLEANROOM_REQUIRE_POSTGRES=1 but {reason}")
            pytest.skip(reason)
    kit = Stores(request.param, tmp_path)
    yield kit
    kit.close()


def entry(seq: int, digest: str | None = None) -> StoredEntry:
    data = f'{{"seq":{seq}}}'.encode()
    return StoredEntry(seq, 1000 + seq, data, leaf_hash(data), digest or f"{seq:064x}")


def test_create_append_read(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    store.append(ROOM, [entry(1), entry(2), entry(3)])
    assert store.size(ROOM) == 4
    assert [e.seq for e in store.entries(ROOM)] == [0, 1, 2, 3]
    assert [e.seq for e in store.entries(ROOM, 2)] == [2, 3]
    assert [e.seq for e in store.entries(ROOM, 1, 3)] == [1, 2]
    assert list(store.entries(ROOM, 2, 2)) == []
    assert next(iter(store.entries(ROOM, 1))) == entry(1)
    assert store.rooms() == [ROOM]
    assert store.size("cd" * 16) == 0


def test_a_room_is_created_once(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    with pytest.raises(GovernanceError, match="already exists"):
        store.create_room(ROOM, entry(0, "f" * 64))


def test_appends_must_continue_at_the_current_size(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    with pytest.raises(StorageError, match="another writer"):
        store.append(ROOM, [entry(2)])  # a gap
    store.append(ROOM, [entry(1)])
    with pytest.raises(StorageError, match="another writer"):
        store.append(ROOM, [entry(1, "e" * 64)])  # a stale writer
    with pytest.raises(StorageError, match="does not exist"):
        store.append("cd" * 16, [entry(0)])
    with pytest.raises(ValueError, match="consecutive"):
        store.append(ROOM, [entry(2), entry(4)])
    assert store.size(ROOM) == 2


def test_a_replayed_digest_is_refused_and_nothing_of_the_batch_lands(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    with pytest.raises(GovernanceError, match="replay"):
        store.append(ROOM, [entry(1), entry(2, f"{0:064x}")])
    assert store.size(ROOM) == 1
    assert [e.seq for e in store.entries(ROOM)] == [0]


def test_tree_heads_keep_their_order(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    for i in range(3):
        store.add_tree_head(ROOM, i + 1, 10 + i, f"token-{i}")
    assert store.tree_heads(ROOM) == ["token-0", "token-1", "token-2"]
    assert store.tree_heads("cd" * 16) == []


def test_everything_survives_a_reopen(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    store.append(ROOM, [entry(1)])
    store.add_tree_head(ROOM, 2, 5, "t")
    store.close()
    again = stores.open()
    assert [e.seq for e in again.entries(ROOM)] == [0, 1]
    assert again.tree_heads(ROOM) == ["t"]


def test_large_rooms_page_through(stores: Stores) -> None:
    store = stores.open()
    store.create_room(ROOM, entry(0))
    store.append(ROOM, [entry(i) for i in range(1, 12_001)])
    assert sum(1 for _ in store.entries(ROOM)) == 12_001


def test_a_whole_room_on_each_store(stores: Stores) -> None:
    clock, service = Clock(), Party.create("ledger")
    room = RoomFixture(Ledger(stores.open(), service, clock=clock), clock)
    pid = room.propose("bank", {"type": "set_measurements", "measurements": []})
    for name in ("bank", "merchant", "analyst"):
        room.vote(name, pid)
    digest = room.ledger.state(room.room).digest()
    reopened = Ledger(stores.open(), service, clock=clock)
    assert reopened.state(room.room).digest() == digest
    verified = verify_export(reopened.export(room.room), service.identity)
    assert verified.state.digest() == digest
