"""Offline ledger verification under an operator who holds the service key and
re-signs tree heads over whatever entries it likes: each case is an attack
that exactly one numbered check of ``verify_export`` stops (found by the
mutants in tests/mutation that survived the rest of the suite)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.errors import IntegrityError, RollbackError
from cleanroom.governance import new_room_id, propose
from cleanroom.ledger import Entry, TreeHead, verify_export
from cleanroom.ledger.merkle import MerkleTree
from tests.rooms import Clock, RoomFixture, make_ledger

MEASUREMENTS = {
    "type": "set_measurements",
    "measurements": [{"platform": "tdx", "value": "ab" * 48}],
}


@pytest.fixture
def room(tmp_path: Path) -> RoomFixture:
    """A room of four members, every invitation accepted, and one proposal: 5 entries."""
    clock = Clock()
    fixture = RoomFixture(make_ledger(tmp_path, clock), clock)
    clock.advance(1_000)
    fixture.propose("bank", MEASUREMENTS)
    return fixture


def entries_of(document: dict[str, Any]) -> list[Entry]:
    return [Entry.from_json(e) for e in document["entries"]]


def forge(
    room: RoomFixture,
    document: dict[str, Any],
    entries: list[Entry],
    heads: list[tuple[int, int]] | None = None,
    *,
    label: str | None = None,
) -> dict[str, Any]:
    """``document`` with ``entries`` and tree heads the operator signs over them:
    one per (size, time) in ``heads``, or one covering every entry."""
    tree = MerkleTree([e.leaf_hash for e in entries])
    label = label or room.room
    heads = heads or [(tree.size, max(e.time for e in entries))]
    tokens = [
        TreeHead.sign(room.ledger.service, label, size, tree.root(size), time).token
        for size, time in heads
    ]
    return {
        **document,
        "room": label,
        "entries": [e.to_json() for e in entries],
        "tree_heads": tokens,
    }


def test_an_export_relabelled_as_another_room_is_refused(room: RoomFixture) -> None:
    """Regression: an export of room Y relabelled as room X, its tree heads re-signed
    for X, verified and reported room X with room Y's state."""
    document = room.ledger.export(room.room)
    service = room.ledger.service.identity
    other = new_room_id()
    relabelled = forge(room, document, entries_of(document), label=other)
    with pytest.raises(IntegrityError, match=r"entry 0 is a statement for room .* relabelled"):
        verify_export(relabelled, service)
    with pytest.raises(IntegrityError, match=r"entry 0 is a statement for room .* relabelled"):
        verify_export(relabelled, service, room=other)


def test_an_export_of_another_room_than_the_one_asked_for_is_refused(room: RoomFixture) -> None:
    document = room.ledger.export(room.room)
    service = room.ledger.service.identity
    with pytest.raises(IntegrityError, match=r"not of room .* asked for"):
        verify_export(document, service, room=new_room_id())
    assert verify_export(document, service, room=room.room).state.room == room.room


def with_signature_of(entry: Entry, token: str) -> Entry:
    """``entry`` with its statement's signature swapped for ``token``'s (same signer)."""
    head, body, _ = entry.statement.split(".")
    return Entry(entry.seq, entry.time, f"{head}.{body}.{token.split('.')[2]}")


def test_a_bad_signature_on_entry_zero_is_found(tmp_path: Path) -> None:
    clock = Clock()
    room = RoomFixture(make_ledger(tmp_path, clock), clock, accept=False)  # entry 0 alone
    document = room.ledger.export(room.room)
    other = propose(room.parties["bank"], room.room, MEASUREMENTS, now=clock)
    forged = forge(room, document, [with_signature_of(entries_of(document)[0], other)])
    for workers in (1, 2):
        with pytest.raises(IntegrityError, match="the signature of entry 0 does not verify"):
            verify_export(forged, room.ledger.service.identity, workers=workers)


def test_a_bad_signature_opening_a_later_chunk_is_found(
    room: RoomFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cleanroom.ledger.verify as v  # noqa: PLC0415

    monkeypatch.setattr(v, "_CHUNK", 4)  # entry 4 is the first of the second chunk
    document = room.ledger.export(room.room)
    entries = entries_of(document)
    other = propose(room.parties["bank"], room.room, MEASUREMENTS, now=room.clock)
    entries[4] = with_signature_of(entries[4], other)
    for workers in (1, 2):
        with pytest.raises(IntegrityError, match="the signature of entry 4 does not verify"):
            verify_export(
                forge(room, document, entries), room.ledger.service.identity, workers=workers
            )


def test_zero_workers_verify_serially(room: RoomFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import cleanroom.ledger.verify as v  # noqa: PLC0415

    monkeypatch.setattr(v, "_CHUNK", 2)  # three chunks
    verified = verify_export(room.ledger.export(room.room), room.ledger.service.identity, workers=0)
    assert len(verified.entries) == 5


def test_entries_renumbered_from_one_are_refused(room: RoomFixture) -> None:
    document = room.ledger.export(room.room)
    shifted = [Entry(e.seq + 1, e.time, e.statement) for e in entries_of(document)]
    with pytest.raises(IntegrityError, match="entry at position 0 claims seq 1"):
        verify_export(forge(room, document, shifted), room.ledger.service.identity)


def test_an_export_cut_below_its_signed_tree_head_is_refused(room: RoomFixture) -> None:
    document = room.ledger.export(room.room)
    cut = {**document, "entries": document["entries"][:-1]}  # the signed heads kept
    with pytest.raises(IntegrityError, match="a tree head covers 5 entries; the export has 4"):
        verify_export(cut, room.ledger.service.identity)


def test_an_entry_older_than_the_one_before_is_refused(room: RoomFixture) -> None:
    document = room.ledger.export(room.room)
    entries = entries_of(document)
    entries[4] = Entry(4, entries[3].time - 1, entries[4].statement)
    with pytest.raises(IntegrityError, match="entry 4 is older than the entry before it"):
        verify_export(forge(room, document, entries), room.ledger.service.identity)


def test_a_ledger_that_starts_at_time_zero_verifies(tmp_path: Path) -> None:
    clock = Clock(start=0)
    room = RoomFixture(make_ledger(tmp_path, clock), clock)
    document = room.ledger.export(room.room)
    assert document["entries"][0]["time"] == 0
    verify_export(document, room.ledger.service.identity)


@pytest.mark.parametrize(
    ("heads", "what"),
    [
        ([(2, 10), (4, 20), (3, 30), (5, 40)], "size"),  # back from 4, not from the first
        ([(2, 10), (3, 30), (4, 20), (5, 40)], "time"),  # back from 30, not from the first
    ],
)
def test_tree_heads_going_back_from_the_one_before_are_a_rollback(
    room: RoomFixture, heads: list[tuple[int, int]], what: str
) -> None:
    document = room.ledger.export(room.room)
    entries = entries_of(document)
    start = entries[-1].time
    heads = [(size, start + time) for size, time in heads]
    with pytest.raises(RollbackError, match="tree heads go backwards in size or time"):
        verify_export(forge(room, document, entries, heads), room.ledger.service.identity)


def test_an_export_naming_a_malformed_service_identity_is_refused(room: RoomFixture) -> None:
    document = room.ledger.export(room.room)
    broken = {**document, "service": {"payload": {"name": "ledger"}}}
    with pytest.raises(IntegrityError, match="the export's service identity is invalid"):
        verify_export(broken, room.ledger.service.identity)
    other = {**document, "service": Party.create("ledger").identity_document()}
    with pytest.raises(IntegrityError, match="made by a different ledger service"):
        verify_export(other, room.ledger.service.identity)


@pytest.fixture
def collector_disabled() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_verifying_leaves_the_garbage_collector_as_it_found_it(room: RoomFixture) -> None:
    document = room.ledger.export(room.room)
    assert gc.isenabled()
    verify_export(document, room.ledger.service.identity)
    assert gc.isenabled()


@pytest.mark.usefixtures("collector_disabled")
def test_verifying_does_not_enable_a_disabled_collector(room: RoomFixture) -> None:
    verify_export(room.ledger.export(room.room), room.ledger.service.identity)
    assert not gc.isenabled()
