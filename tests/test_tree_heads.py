"""The tree heads a party keeps between sessions (ledger/heads.py): the store is
injected; what it hands back is verified again, so a tampered or swapped file
is refused rather than trusted; the pure verifier reads no file."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import cleanroom.ledger.verify as verify_module
from cleanroom import Party
from cleanroom.errors import DeserializationError, ForkError, IntegrityError
from cleanroom.ledger import FileHeadStore, MemoryHeadStore, TreeHeadTracker
from tests.test_ledger import MEASUREMENTS, RoomFixture, clock, room

__all__ = ["clock", "room"]  # fixtures


def _observe(tracker: TreeHeadTracker, room: RoomFixture) -> None:
    head = room.ledger.tree_head(room.room)
    tracker.observe(head, lambda a, b: room.ledger.consistency_proof(room.room, a, b))


def test_a_memory_store_keeps_heads_for_the_process_only(room: RoomFixture) -> None:
    service = room.ledger.service.identity
    store = MemoryHeadStore()
    _observe(TreeHeadTracker(service, store), room)
    assert TreeHeadTracker(service, store).last(room.room) == room.ledger.tree_head(room.room)
    assert TreeHeadTracker(service).last(room.room) is None  # the default keeps nothing


def test_a_head_stored_under_another_room_is_refused(room: RoomFixture, tmp_path: Path) -> None:
    service = room.ledger.service.identity
    path = tmp_path / "heads.json"
    _observe(TreeHeadTracker(service, FileHeadStore(path)), room)
    tokens = json.loads(path.read_text())
    path.write_text(json.dumps({"f" * 64: tokens[room.room]}))
    with pytest.raises(IntegrityError, match=r"^tree head is for another room$"):
        TreeHeadTracker(service, FileHeadStore(path))


def test_a_head_signed_by_another_service_is_refused(room: RoomFixture, tmp_path: Path) -> None:
    path = tmp_path / "heads.json"
    _observe(TreeHeadTracker(room.ledger.service.identity, FileHeadStore(path)), room)
    with pytest.raises(IntegrityError):
        TreeHeadTracker(Party.create("impostor").identity, FileHeadStore(path))


@pytest.mark.parametrize("document", ["[]", '{"room": 5}', '"heads"', "{"])
def test_a_malformed_heads_file_is_refused_naming_it(
    room: RoomFixture, tmp_path: Path, document: str
) -> None:
    path = tmp_path / "heads.json"
    path.write_text(document)
    with pytest.raises(DeserializationError, match="heads"):
        TreeHeadTracker(room.ledger.service.identity, FileHeadStore(path))


def test_a_rollback_seen_after_a_restart_is_still_refused(
    room: RoomFixture, tmp_path: Path
) -> None:
    service = room.ledger.service.identity
    path = tmp_path / "heads.json"
    early = room.ledger.tree_head(room.room)
    room.propose("bank", MEASUREMENTS)
    room.clock.advance(5_000)
    _observe(TreeHeadTracker(service, FileHeadStore(path)), room)
    reloaded = TreeHeadTracker(service, FileHeadStore(path))
    with pytest.raises(IntegrityError, match="rolled back"):
        reloaded.observe(early, lambda a, b: [])
    assert reloaded.last(room.room) == room.ledger.tree_head(room.room)  # kept the newer one
    reloaded_size = room.ledger.tree_head(room.room).size
    forged = type(early).sign(
        room.ledger.service, room.room, reloaded_size + 50, b"\x01" * 32, early.time + 10**6
    )
    with pytest.raises(ForkError):
        reloaded.observe(forged, lambda a, b: [b"\x00" * 32])


def test_the_verifier_reads_and_writes_no_file() -> None:
    tree = ast.parse(Path(verify_module.__file__).read_text())
    called = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not called & {
        "open",
        "read_text",
        "write_text",
        "read_bytes",
        "write_file",
        "read_json_file",
    }
