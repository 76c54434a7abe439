"""The ledger as a whole: exports that verify offline, a tamper table, a
malicious operator that re-signs tree heads, receipts, tree-head policy,
restart, and client-side fork and rollback detection."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom import Party
from cleanroom.errors import (
    DeserializationError,
    ForkError,
    GovernanceError,
    IntegrityError,
    RollbackError,
)
from cleanroom.governance import propose, revoke_consent, vote
from cleanroom.governance.views import room_view
from cleanroom.ledger import (
    Entry,
    FileHeadStore,
    Ledger,
    SQLiteStore,
    TreeHead,
    TreeHeadPolicy,
    TreeHeadTracker,
    check_extends,
    verify_export,
    verify_receipt,
)
from cleanroom.ledger.log import QuarantinedError
from cleanroom.ledger.merkle import EMPTY_ROOT, MerkleTree, verify_consistency
from tests.rooms import Clock, RoomFixture, make_ledger

MEASUREMENTS = {
    "type": "set_measurements",
    "measurements": [{"platform": "tdx", "value": "cd" * 48}],
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def room(tmp_path: Path, clock: Clock) -> RoomFixture:
    """A room with a registered dataset, an accepted and an open proposal, and a
    revoked consent: 13 entries, several tree heads. Entries: 0 create, 1-3
    accepts, 4 register proposal, 5-6 its ballots, 7 measurements proposal,
    8-10 its ballots, 11 open proposal, 12 consent revocation."""
    fixture = RoomFixture(make_ledger(tmp_path, clock, max_entries=4), clock)
    fixture.register("merchant", "customers", tmp_path, voters=["merchant", "bank"])
    accepted = fixture.propose("bank", MEASUREMENTS)
    for name in ("bank", "merchant", "analyst"):
        fixture.vote(name, accepted)
    fixture.propose("analyst", MEASUREMENTS)  # left open
    fixture.revoke("merchant", "customers")
    return fixture


def export_of(room: RoomFixture) -> dict[str, Any]:
    return room.ledger.export(room.room)


def test_export_verifies_offline_and_rederives_the_same_state(room: RoomFixture) -> None:
    document = json.loads(json.dumps(export_of(room)))  # as read from a file
    verified = verify_export(document, room.ledger.service.identity)
    assert len(verified.entries) == room.ledger.size(room.room) == 13
    assert verified.state.digest() == room.ledger.state(room.room).digest()
    assert room_view(verified.state)["datasets"][0]["consent"] is False
    assert len(verified.tree_heads) >= 3


def test_threaded_and_serial_signature_checks_agree(
    room: RoomFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cleanroom.ledger.verify as v  # noqa: PLC0415

    monkeypatch.setattr(v, "_CHUNK", 4)  # several chunks, so several threads
    document = export_of(room)
    service = room.ledger.service.identity
    threaded = verify_export(document, service, workers=2)
    serial = verify_export(document, service, workers=1)
    assert threaded.state.digest() == serial.state.digest()
    tokens = tokens_of(document)
    head, body, _ = tokens[10].split(".")
    tokens[10] = ".".join([head, body, tokens[9].split(".")[2]])  # a bad signature in chunk 3
    for workers in (1, 2):
        with pytest.raises(IntegrityError, match="signature of entry 10"):
            verify_export(resign(room, document, tokens), service, workers=workers)


# -- tampering without the service key -------------------------------------------------


def _entries(edit: Callable[[list[dict[str, Any]]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        edit(document["entries"])

    return mutate


def _flip_statement(entries: list[dict[str, Any]]) -> None:
    token = entries[5]["statement"]
    head, body, sig = token.split(".")
    entries[5]["statement"] = f"{head}.{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{sig}"


def _swap_signatures(entries: list[dict[str, Any]]) -> None:
    a, b = entries[5]["statement"].split("."), entries[6]["statement"].split(".")
    entries[5]["statement"] = ".".join([a[0], a[1], b[2]])
    entries[6]["statement"] = ".".join([b[0], b[1], a[2]])


def _reorder(entries: list[dict[str, Any]]) -> None:
    entries[5]["statement"], entries[6]["statement"] = (
        entries[6]["statement"],
        entries[5]["statement"],
    )


def _forge_head(document: dict[str, Any]) -> None:
    impostor = Party.create("ledger")
    last = document["tree_heads"][-1]
    payload = json.loads(__import__("base64").urlsafe_b64decode(last.split(".")[1] + "=="))
    forged = TreeHead.sign(
        impostor, payload["room"], payload["size"], bytes.fromhex(payload["root"]), payload["time"]
    )
    document["tree_heads"][-1] = forged.token


def _edit_head_root(document: dict[str, Any]) -> None:
    head, body, sig = document["tree_heads"][-1].split(".")
    document["tree_heads"][-1] = (
        f"{head}.{body[:10]}{'A' if body[10] != 'A' else 'B'}{body[11:]}.{sig}"
    )


TAMPER: dict[str, tuple[Callable[[dict[str, Any]], None], type[Exception], str]] = {
    "statement bytes modified": (_entries(_flip_statement), IntegrityError, "signed tree head"),
    "entry deleted": (
        _entries(lambda e: e.pop(5)),
        IntegrityError,
        "deleted, inserted or reordered",
    ),
    "entry inserted": (
        _entries(lambda e: e.insert(5, dict(e[4]))),
        IntegrityError,
        "deleted, inserted or reordered",
    ),
    "entries reordered": (_entries(_reorder), IntegrityError, "signed tree head"),
    "entry time changed": (
        _entries(lambda e: e[7].update(time=e[7]["time"] + 1)),
        IntegrityError,
        "signed tree head|older than the entry before",
    ),
    "signatures swapped between entries": (
        _entries(_swap_signatures),
        IntegrityError,
        "signed tree head",
    ),
    "last tree head dropped": (lambda d: d["tree_heads"].pop(), IntegrityError, "not covered"),
    "tree heads reordered": (lambda d: d["tree_heads"].reverse(), RollbackError, "backwards"),
    "tree head signed by another key": (_forge_head, IntegrityError, "different key"),
    "tree head root edited": (_edit_head_root, IntegrityError, "signature|malformed"),
    "all entries removed": (_entries(lambda e: e.clear()), IntegrityError, "no entries"),
    "service identity swapped": (
        lambda d: d.update(service=Party.create("x").identity_document()),
        IntegrityError,
        "different ledger service",
    ),
    "format changed": (lambda d: d.update(format="other"), DeserializationError, "format"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_exports_are_rejected(room: RoomFixture, case: str) -> None:
    mutate, error, message = TAMPER[case]
    document = copy.deepcopy(export_of(room))
    mutate(document)
    with pytest.raises(error, match=message):
        verify_export(document, room.ledger.service.identity)


# -- a malicious operator: holds the service key, re-signs tree heads ---------------------


def resign(room: RoomFixture, document: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    """The export an operator could forge: any statement list, freshly signed heads."""
    entries = [Entry(i, room.clock() + i, t) for i, t in enumerate(tokens)]
    tree = MerkleTree([e.leaf_hash for e in entries])
    head = TreeHead.sign(
        room.ledger.service, room.room, tree.size, tree.root(), room.clock() + len(tokens)
    )
    return {**document, "entries": [e.to_json() for e in entries], "tree_heads": [head.token]}


def tokens_of(document: dict[str, Any]) -> list[str]:
    return [e["statement"] for e in document["entries"]]


OPERATOR_ATTACKS: dict[
    str, tuple[Callable[[RoomFixture, list[str]], list[str]], type[Exception], str]
] = {
    "statement by a non-member inserted": (
        lambda r, t: [*t, propose(Party.create("x"), r.room, MEASUREMENTS, now=r.clock)],
        GovernanceError,
        "not a member",
    ),
    "old statement replayed": (lambda r, t: [*t, t[9]], GovernanceError, "replay"),
    "ballot moved before its proposal": (
        lambda r, t: [*t[:7], t[8], t[7], *t[9:]],
        GovernanceError,
        "no proposal",
    ),
    "signatures swapped and heads re-signed": (
        lambda r, t: [*t[:5], ".".join([*t[5].split(".")[:2], t[6].split(".")[2]]), *t[6:]],
        IntegrityError,
        "signature of entry 5",
    ),
    "ballot on an accepted proposal inserted": (
        lambda r, t: [
            *t,
            vote(r.parties["analyst"], r.room, _accepted(r), approve=False, now=r.clock),
        ],
        GovernanceError,
        "accepted, not open",
    ),
    "revocation forged for another member": (
        lambda r, t: [*t, revoke_consent(Party.create("x"), r.room, "customers", now=r.clock)],
        GovernanceError,
        "not a member",
    ),
}


def _accepted(room: RoomFixture) -> str:
    state = room.ledger.state(room.room)
    return next(
        p.id
        for p in state.proposals.values()
        if p.status == "accepted" and p.action.type == "set_measurements"
    )


@pytest.mark.parametrize("case", sorted(OPERATOR_ATTACKS))
def test_operator_rewrites_fail_governance(room: RoomFixture, case: str) -> None:
    build, error, message = OPERATOR_ATTACKS[case]
    document = export_of(room)
    forged = resign(room, document, build(room, tokens_of(document)))
    with pytest.raises(error, match=message):
        verify_export(forged, room.ledger.service.identity)


def test_operator_deleting_a_revocation_is_a_detected_fork(room: RoomFixture) -> None:
    """Dropping the consent revocation gives a valid-looking history; only a
    client that saw the real head can tell. It must."""
    document = export_of(room)
    service = room.ledger.service.identity
    tracker = TreeHeadTracker(service)
    honest = verify_export(document, service)
    tracker.observe(honest.head, lambda a, b: [])
    replacement = propose(room.parties["bank"], room.room, MEASUREMENTS, now=room.clock)
    rewritten = [*tokens_of(document)[:-1], replacement]
    forged = verify_export(resign(room, document, rewritten), service)  # self-consistent
    assert forged.state.datasets["customers"].consent  # the revocation is gone
    proof = MerkleTree([e.leaf_hash for e in forged.entries]).consistency_proof
    with pytest.raises(ForkError, match="fork"):
        tracker.observe(forged.head, proof)
    assert tracker.last(room.room) == honest.head  # the old head is kept


def test_operator_truncating_history_is_a_detected_rollback(room: RoomFixture) -> None:
    document = export_of(room)
    service = room.ledger.service.identity
    tracker = TreeHeadTracker(service)
    tracker.observe(verify_export(document, service).head, lambda a, b: [])
    shorter = verify_export(resign(room, document, tokens_of(document)[:-3]), service)
    with pytest.raises(RollbackError, match="rolled back"):
        tracker.observe(shorter.head, lambda a, b: [])


# -- the tracker on the live ledger --------------------------------------------------------


def test_tracker_accepts_honest_growth_and_persists(room: RoomFixture, tmp_path: Path) -> None:
    service = room.ledger.service.identity
    path = tmp_path / "heads.json"
    tracker = TreeHeadTracker(service, FileHeadStore(path))
    first = room.ledger.tree_head(room.room)
    tracker.observe(first, lambda a, b: room.ledger.consistency_proof(room.room, a, b))
    room.propose("bank", MEASUREMENTS)
    room.clock.advance(5_000)
    later = room.ledger.tree_head(room.room)
    assert later.size > first.size
    tracker.observe(later, lambda a, b: room.ledger.consistency_proof(room.room, a, b))
    reloaded = TreeHeadTracker(service, FileHeadStore(path))
    assert reloaded.last(room.room) == later
    with pytest.raises(ForkError):  # a proof for other sizes does not link them
        check_extends(first, later, room.ledger.consistency_proof(room.room, 1, later.size))


def test_same_size_different_root_is_a_fork(room: RoomFixture) -> None:
    head = room.ledger.tree_head(room.room)
    other = TreeHead.sign(room.ledger.service, room.room, head.size, b"\x00" * 32, head.time)
    with pytest.raises(ForkError):
        check_extends(head, other, [])
    older = TreeHead.sign(room.ledger.service, room.room, head.size, head.root, head.time - 1)
    with pytest.raises(RollbackError, match="older"):
        check_extends(head, older, [])


# -- receipts ---------------------------------------------------------------------------------


def test_receipts_verify_offline(room: RoomFixture) -> None:
    service = room.ledger.service.identity
    for seq in range(room.ledger.size(room.room)):
        receipt = json.loads(json.dumps(room.ledger.receipt(room.room, seq).to_json()))
        assert verify_receipt(receipt, service).entry.seq == seq


def _flip_last(value: str) -> str:
    return value[:-1] + ("A" if value[-1] != "A" else "B")


def _flip_hex(value: str) -> str:
    return ("0" if value[0] != "0" else "1") + value[1:]


RECEIPT_TAMPER: dict[str, Callable[[dict[str, Any]], None]] = {
    "entry statement": lambda r: r["entry"].update(statement=_flip_last(r["entry"]["statement"])),
    "entry seq": lambda r: r["entry"].update(seq=r["entry"]["seq"] + 1),
    "entry time": lambda r: r["entry"].update(time=r["entry"]["time"] + 1),
    "proof element": lambda r: r["inclusion"].__setitem__(0, _flip_hex(r["inclusion"][0])),
    "proof truncated": lambda r: r["inclusion"].pop(),
    "proof extended": lambda r: r["inclusion"].append("00" * 32),
    "tree head from another room": lambda r: r.update(room="0" * 32),
    "tree head token": lambda r: r.update(
        tree_head=_flip_last(r["tree_head"][:-3]) + r["tree_head"][-3:]
    ),
    "not hex": lambda r: r["inclusion"].__setitem__(0, "zz" * 32),
}


@pytest.mark.parametrize("case", sorted(RECEIPT_TAMPER))
def test_tampered_receipts_are_rejected(room: RoomFixture, case: str) -> None:
    receipt = room.ledger.receipt(room.room, 6).to_json()
    RECEIPT_TAMPER[case](receipt)
    with pytest.raises(IntegrityError):
        verify_receipt(receipt, room.ledger.service.identity)


def test_receipt_from_another_service_key(room: RoomFixture) -> None:
    with pytest.raises(IntegrityError, match="different key"):
        verify_receipt(room.ledger.receipt(room.room, 1).to_json(), Party.create("x").identity)


# -- tree head policy, atomic submission, restart -----------------------------------------------


def test_tree_heads_every_n_entries_or_t_ms(tmp_path: Path, clock: Clock) -> None:
    ledger = make_ledger(tmp_path, clock, max_entries=3, max_delay_ms=1_000)
    room = RoomFixture(ledger, clock)  # create + 3 accepts
    heads = ledger.store.tree_heads(room.room)
    assert [TreeHead.verify(t, ledger.service.identity, room=room.room).size for t in heads] == [
        1,
        4,
    ]
    room.propose("bank", MEASUREMENTS)
    assert len(ledger.store.tree_heads(room.room)) == 2  # 1 uncovered, not yet due
    clock.advance(1_000)
    assert ledger.tree_head(room.room).size == 5  # due by time on the next read
    with pytest.raises(ValueError, match="max_entries"):
        TreeHeadPolicy(max_entries=0)


def test_a_batch_is_all_or_nothing(room: RoomFixture) -> None:
    pid = room.propose("bank", MEASUREMENTS)
    size, digest = room.ledger.size(room.room), room.ledger.state(room.room).digest()
    good = vote(room.parties["bank"], room.room, pid, approve=True, now=room.clock)
    bad = vote(room.parties["bank"], room.room, pid, approve=False, now=room.clock)  # duplicate
    with pytest.raises(GovernanceError, match="already voted"):
        room.ledger.submit(room.room, [good, bad])
    assert room.ledger.size(room.room) == size
    assert room.ledger.state(room.room).digest() == digest
    room.ledger.submit(room.room, [good])  # the good ballot alone still goes in
    assert room.ledger.size(room.room) == size + 1


def test_restart_keeps_everything(tmp_path: Path, clock: Clock) -> None:
    service = Party.create("ledger")
    store = SQLiteStore(tmp_path / "l.sqlite3")
    room = RoomFixture(Ledger(store, service, clock=clock), clock)
    room.propose("bank", MEASUREMENTS)
    digest, size = room.ledger.state(room.room).digest(), room.ledger.size(room.room)
    store.close()
    reopened = Ledger(SQLiteStore(tmp_path / "l.sqlite3"), service, clock=clock)
    assert reopened.size(room.room) == size
    assert reopened.state(room.room).digest() == digest
    room.ledger = reopened
    room.propose("merchant", MEASUREMENTS)
    verify_export(reopened.export(room.room), service.identity)


def test_store_edited_while_the_service_was_down(tmp_path: Path, clock: Clock) -> None:
    service = Party.create("ledger")
    room = RoomFixture(Ledger(SQLiteStore(tmp_path / "l.sqlite3"), service, clock=clock), clock)
    room.ledger.tree_head(room.room)
    db = sqlite3.connect(tmp_path / "l.sqlite3")
    row = db.execute("SELECT data FROM entries WHERE seq = 2").fetchone()[0]
    db.execute("UPDATE entries SET data = ? WHERE seq = 2", (row.replace(b'"time":', b'"time":1'),))
    db.commit()
    db.close()
    with pytest.raises(IntegrityError):
        Ledger(SQLiteStore(tmp_path / "l.sqlite3"), service, clock=clock).state(room.room)


def test_unknown_room_and_bad_ranges(room: RoomFixture) -> None:
    with pytest.raises(GovernanceError, match="no room"):
        room.ledger.state("0" * 32)
    with pytest.raises(GovernanceError, match="no entry"):
        room.ledger.receipt(room.room, 999)
    with pytest.raises(GovernanceError, match="no consistency proof"):
        room.ledger.consistency_proof(room.room, 5, 999)


@given(
    st.integers(0, 2**53 - 1),
    st.integers(0, 2**53 - 1),
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=200
    )
    | st.text(max_size=50),
)
def test_entry_encoding_is_exactly_rfc8785(seq: int, time: int, statement: str) -> None:
    from cleanroom.crypto.canonical import canonical_json  # noqa: PLC0415

    entry = Entry(seq, time, statement)
    assert entry.encode() == canonical_json(entry.to_json())


def test_a_failed_commit_leaves_the_cache_exact(
    room: RoomFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaves join the in-memory tree before the commit; a failure must undo that."""
    size, digest = room.ledger.size(room.room), room.ledger.state(room.room).digest()
    token = propose(room.parties["bank"], room.room, MEASUREMENTS, now=room.clock)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk vanished")  # not a CleanroomError: an unexpected failure

    monkeypatch.setattr(room.ledger.store, "append", broken)
    with pytest.raises(OSError, match="disk vanished"):
        room.ledger.submit(room.room, [token])
    monkeypatch.undo()
    assert room.ledger.size(room.room) == size
    assert room.ledger.state(room.room).digest() == digest
    room.ledger.submit(room.room, [token])  # the same statement goes in once the disk is back
    verify_export(room.ledger.export(room.room), room.ledger.service.identity)


def test_a_statement_withheld_and_appended_days_later_is_refused_offline(
    room: RoomFixture,
) -> None:
    """The operator holds a signed statement back and appends it six days later,
    re-signing the tree head: entry times drive proposal expiry and the time at
    which evidence is checked, so an auditor refuses an entry recorded far from
    when its statement was signed (the writer's own skew rule)."""
    document = export_of(room)
    tokens = tokens_of(document)
    six_days = 6 * 24 * 3600 * 1000
    entries = [Entry(i, room.clock() + i, t) for i, t in enumerate(tokens)]
    late = Entry(len(tokens), room.clock() + six_days, tokens[-1])  # the revocation, held back
    withheld = [*entries[:-1], Entry(len(tokens) - 1, late.time, late.statement)]
    tree = MerkleTree([e.leaf_hash for e in withheld])
    head = TreeHead.sign(room.ledger.service, room.room, tree.size, tree.root(), late.time + 1)
    forged = {**document, "entries": [e.to_json() for e in withheld], "tree_heads": [head.token]}
    with pytest.raises(IntegrityError, match="from the time its statement was signed"):
        verify_export(forged, room.ledger.service.identity)
    # the same entries recorded on time verify
    assert verify_export(resign(room, document, tokens), room.ledger.service.identity)


@pytest.mark.parametrize(
    ("old_root", "proof"),
    [
        (b"\x00" * 32, []),  # an old root that is not the empty tree's
        (None, [b"\x01" * 32]),  # a junk proof from the empty tree
    ],
)
def test_consistency_from_the_empty_tree_takes_no_proof(
    old_root: bytes | None, proof: list[bytes]
) -> None:
    tree = MerkleTree([bytes([i]) * 32 for i in range(5)])
    root = EMPTY_ROOT if old_root is None else old_root
    with pytest.raises(IntegrityError, match="empty tree"):
        verify_consistency(0, tree.size, root, tree.root(), proof)
    verify_consistency(0, tree.size, EMPTY_ROOT, tree.root(), [])


def test_a_room_whose_history_does_not_verify_is_quarantined_alone(
    tmp_path: Path, clock: Clock
) -> None:
    """The operator (or a disk) corrupts one room's stored entries: that room is
    refused with the reason, every other room is served as before."""
    service = Party.create("ledger")
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(SQLiteStore(path), service, clock=clock)
    bad, good = RoomFixture(ledger, clock), RoomFixture(ledger, clock)
    ledger.tree_head(bad.room)
    ledger.tree_head(good.room)
    db = sqlite3.connect(path)
    row = db.execute("SELECT data FROM entries WHERE room = ? AND seq = 2", (bad.room,)).fetchone()[
        0
    ]
    db.execute(
        "UPDATE entries SET data = ? WHERE room = ? AND seq = 2",
        (row.replace(b'"time":', b'"time":1'), bad.room),
    )
    db.commit()
    db.close()
    reopened = Ledger(SQLiteStore(path), service, clock=clock)
    assert reopened.healthy_rooms() == [good.room]
    assert bad.room in reopened.quarantined
    for _ in range(2):  # refused each time, without verifying again
        with pytest.raises(QuarantinedError, match="quarantined"):
            reopened.state(bad.room)
    assert reopened.state(good.room).status == "active"
    with pytest.raises(GovernanceError, match="no room"):
        reopened.state("0" * 32)  # an unknown room is not quarantined
    assert "0" * 32 not in reopened.quarantined
