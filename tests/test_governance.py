"""Governance: constitution decision tables, the proposal state machine, and
attacks by members and non-members. Every test drives a real ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.errors import GovernanceError, IntegrityError
from cleanroom.governance import Constitution, propose, sign_statement, vote, withdraw
from cleanroom.governance.statements import ConstitutionBody
from tests.rooms import Clock, RoomFixture, make_ledger

MEASUREMENTS = {
    "type": "set_measurements",
    "measurements": [{"platform": "sev-snp", "value": "ab" * 48}],
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def room_with(tmp_path: Path, clock: Clock, **kwargs: Any) -> RoomFixture:
    return RoomFixture(make_ledger(tmp_path, clock), clock, **kwargs)


# -- decision tables ----------------------------------------------------------------

A, B, C, D = "a", "b", "c", "d"
FOUR = frozenset({A, B, C, D})
DECISIONS = [
    # rule, k, approvals, rejections, outcome (four approvers)
    ("default", None, set(), set(), "open"),
    ("default", None, {A, B, C}, set(), "open"),
    ("default", None, {A, B, C, D}, set(), "accepted"),
    ("default", None, {A, B, C}, {D}, "rejected"),
    ("default", None, set(), {A}, "rejected"),
    ("unanimity", None, {A, B, C, D}, set(), "accepted"),
    ("unanimity", None, {A, B, C}, {D}, "rejected"),
    ("majority", None, {A, B}, set(), "open"),
    ("majority", None, {A, B, C}, set(), "accepted"),
    ("majority", None, {A, B}, {C}, "open"),
    ("majority", None, {A}, {B, C}, "rejected"),
    ("majority", None, set(), {A, B}, "rejected"),
    ("threshold", 2, {A}, set(), "open"),
    ("threshold", 2, {A, B}, set(), "accepted"),
    ("threshold", 2, {A}, {B, C}, "open"),
    ("threshold", 2, {A}, {B, C, D}, "rejected"),
    ("threshold", 4, {A, B, C}, {D}, "rejected"),
    ("threshold", 1, {D}, {A, B, C}, "accepted"),
]


@pytest.mark.parametrize(("rule", "k", "yes", "no", "outcome"), DECISIONS)
def test_decision_table(
    rule: str, k: int | None, yes: set[str], no: set[str], outcome: str
) -> None:
    constitution = Constitution.from_body(ConstitutionBody(rule=rule, k=k))  # type: ignore[arg-type]
    assert constitution.decide(FOUR, set(yes), set(no)) == outcome


def test_votes_from_outside_the_approver_set_do_not_count() -> None:
    constitution = Constitution.from_body(ConstitutionBody(rule="majority"))
    assert constitution.decide(frozenset({A, B, C}), {A, "x", "y"}, set()) == "open"


def test_an_empty_approver_set_is_an_error_never_a_pass() -> None:
    constitution = Constitution.from_body(ConstitutionBody(rule="unanimity"))
    with pytest.raises(GovernanceError, match="no approver"):
        constitution.decide(frozenset(), set(), set())


@pytest.mark.parametrize(
    ("body", "message"),
    [({"rule": "threshold"}, "needs k"), ({"rule": "majority", "k": 2}, "only meaningful")],
)
def test_invalid_constitutions(body: dict[str, Any], message: str) -> None:
    with pytest.raises(GovernanceError, match=message):
        Constitution.from_body(ConstitutionBody(**body))


# Three voting members (bank: data provider + result recipient, merchant: data
# provider, analyst) and one observer. Under "default", registering the
# merchant's dataset needs the merchant and the bank (result recipient); a
# room-level change (measurements) needs all three voters.
ROOM_TABLE = [
    # rule, k, kind, ballots in order, expected status
    ("default", None, "room", [("bank", True), ("merchant", True)], "open"),
    ("default", None, "room", [("bank", True), ("merchant", True), ("analyst", True)], "accepted"),
    ("default", None, "room", [("bank", True), ("analyst", False)], "rejected"),
    ("default", None, "dataset", [("merchant", True)], "open"),
    ("default", None, "dataset", [("merchant", True), ("bank", True)], "accepted"),
    ("default", None, "dataset", [("merchant", True), ("bank", False)], "rejected"),
    ("unanimity", None, "dataset", [("merchant", True), ("bank", True)], "open"),
    (
        "unanimity",
        None,
        "dataset",
        [("merchant", True), ("bank", True), ("analyst", True)],
        "accepted",
    ),
    ("majority", None, "room", [("bank", True)], "open"),
    ("majority", None, "room", [("bank", True), ("analyst", True)], "accepted"),
    ("majority", None, "room", [("bank", False), ("analyst", False)], "rejected"),
    ("majority", None, "dataset", [("merchant", True), ("analyst", True)], "accepted"),
    ("threshold", 2, "room", [("analyst", True)], "open"),
    ("threshold", 2, "room", [("analyst", True), ("bank", False), ("merchant", True)], "accepted"),
    ("threshold", 3, "room", [("analyst", True), ("bank", False)], "rejected"),
]


@pytest.mark.parametrize(("rule", "k", "kind", "ballots", "expected"), ROOM_TABLE)
def test_governance_table(
    tmp_path: Path,
    clock: Clock,
    rule: str,
    k: int | None,
    kind: str,
    ballots: list[tuple[str, bool]],
    expected: str,
) -> None:
    constitution: dict[str, Any] = {"rule": rule} | ({"k": k} if k else {})
    room = room_with(tmp_path, clock, constitution=constitution)
    if kind == "room":
        pid = room.propose("bank", MEASUREMENTS)
    else:
        manifest = room.manifest("merchant", "customers", tmp_path)
        pid = room.propose("merchant", {"type": "register_dataset", "manifest": manifest})
    for name, approve in ballots:
        room.vote(name, pid, approve=approve)
    assert room.status(pid) == expected
    state = room.ledger.state(room.room)
    assert (state.measurements != ()) == (expected == "accepted" and kind == "room")
    assert ("customers" in state.datasets) == (expected == "accepted" and kind == "dataset")


# -- the room's life -----------------------------------------------------------------


def test_room_is_active_only_after_every_member_accepts(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock, accept=False)
    assert room.ledger.state(room.room).status == "pending"
    with pytest.raises(GovernanceError, match="not active yet"):
        room.propose("bank", MEASUREMENTS)
    room.accept("merchant")
    room.accept("analyst")
    assert room.ledger.state(room.room).status == "pending"
    room.accept("auditor")
    state = room.ledger.state(room.room)
    assert (state.status, state.contract_version) == ("active", 1)


def test_acceptance_must_name_the_members_invitation(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock, accept=False)
    with pytest.raises(GovernanceError, match="different invitation"):
        room.accept("merchant", invitation="0" * 64)
    room.accept("merchant")
    with pytest.raises(GovernanceError, match="no pending invitation"):
        room.accept("merchant")


def test_creator_must_be_a_member(tmp_path: Path, clock: Clock) -> None:
    ledger = make_ledger(tmp_path, clock)
    outsider, bank = Party.create("outsider"), Party.create("bank")
    from cleanroom.governance import new_room_id, room_create  # noqa: PLC0415

    token = room_create(
        outsider,
        new_room_id(),
        name="x",
        members=[(bank.identity_document(), ["data_provider"])],
        now=clock,
    )
    with pytest.raises(GovernanceError, match="creator must be one of its members"):
        ledger.create_room(token)


def test_dataset_analysis_consent_lifecycle(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    room.register("bank", "cards", tmp_path, voters=["bank"])
    room.register("merchant", "customers", tmp_path, voters=["merchant", "bank"])
    analysis = {
        "type": "add_analysis",
        "name": "segments",
        "language": "sql",
        "text": "SELECT COUNT(*) AS n FROM cards, customers",
        "inputs": ["cards", "customers"],
        "recipients": [room.fp("bank")],
    }
    pid = room.propose("analyst", analysis)
    state = room.ledger.state(room.room)
    assert state.proposals[pid].approvers == {room.fp("bank"), room.fp("merchant")}
    room.vote("bank", pid)
    room.vote("merchant", pid)
    assert room.status(pid) == "accepted"
    version = room.ledger.state(room.room).contract_version
    # any owner stops its data being used at once, without a vote
    room.revoke("merchant", "customers")
    state = room.ledger.state(room.room)
    assert not state.datasets["customers"].consent
    assert state.contract_version == version + 1
    with pytest.raises(GovernanceError, match="revoked consent"):
        room.propose("analyst", {**analysis, "name": "segments2"})
    # restoring consent is a normal proposal
    restore = room.propose("merchant", {"type": "restore_consent", "dataset": "customers"})
    room.vote("merchant", restore)
    room.vote("bank", restore)
    assert room.ledger.state(room.room).datasets["customers"].consent


def test_only_owners_act_on_their_datasets(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    room.register("merchant", "customers", tmp_path, voters=["merchant", "bank"])
    with pytest.raises(GovernanceError, match="only the dataset's owner"):
        room.revoke("bank", "customers")
    with pytest.raises(GovernanceError, match="only the dataset's owner"):
        room.propose("bank", {"type": "set_privacy_budget", "dataset": "customers", "epsilon": 1.0})
    # a member cannot register a manifest signed by someone else
    manifest = room.manifest("merchant", "stolen", tmp_path)
    with pytest.raises(GovernanceError, match="only a dataset's owner"):
        room.propose("bank", {"type": "register_dataset", "manifest": manifest})


def test_forged_manifest_is_refused(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    manifest = room.manifest("merchant", "customers", tmp_path)
    manifest["payload"]["rows"] = 1_000_000
    with pytest.raises(GovernanceError, match="does not verify"):
        room.propose("merchant", {"type": "register_dataset", "manifest": manifest})


def test_add_and_remove_members(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    newcomer = Party.create("hospital")
    pid = room.propose(
        "bank",
        {
            "type": "add_member",
            "identity": newcomer.identity_document(),
            "roles": ["data_provider"],
        },
    )
    for name in ("bank", "merchant", "analyst"):
        room.vote(name, pid)
    state = room.ledger.state(room.room)
    assert state.members[newcomer.fingerprint].status == "invited"
    room.parties["hospital"] = newcomer
    with pytest.raises(GovernanceError, match="not an active member"):
        room.propose("hospital", MEASUREMENTS)
    room.accept("hospital", invitation=pid)
    assert room.ledger.state(room.room).members[newcomer.fingerprint].status == "active"
    # removal needs every voter but the subject
    remove = room.propose("bank", {"type": "remove_member", "member": room.fp("merchant")})
    assert room.ledger.state(room.room).proposals[remove].approvers == {
        room.fp(n) for n in ("bank", "analyst", "hospital")
    }
    for name in ("bank", "analyst", "hospital"):
        room.vote(name, remove)
    with pytest.raises(GovernanceError, match="not an active member"):
        room.propose("merchant", MEASUREMENTS)


# -- attacks and closed proposals ---------------------------------------------------------


def test_statement_by_a_non_member(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    intruder = Party.create("intruder")
    with pytest.raises(GovernanceError, match="not a member"):
        room.ledger.submit(room.room, [propose(intruder, room.room, MEASUREMENTS, now=clock)])


def test_impersonation_with_a_members_key_id(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    intruder = Party.create("intruder")
    # the intruder signs with its own key but claims to be the bank
    impostor = Party("bank", intruder.signing_private, room.parties["bank"].encryption_private)
    forged = propose(impostor, room.room, MEASUREMENTS, now=clock)
    with pytest.raises(GovernanceError):  # kid is the intruder's fingerprint: not a member
        room.ledger.submit(room.room, [forged])
    from cleanroom.crypto import jws  # noqa: PLC0415
    from cleanroom.crypto.canonical import canonical_json  # noqa: PLC0415

    payload = {
        "room": room.room,
        "kind": "proposal.create",
        "author": room.fp("bank"),
        "nonce": "A" * 22,
        "created_at": clock(),
        "body": {"action": MEASUREMENTS},
    }
    token = jws.sign(
        canonical_json(payload),
        intruder.signing_private,
        kid=room.fp("bank"),
        typ="cleanroom-statement+jws",
    )
    with pytest.raises(IntegrityError, match="signature verification failed"):
        room.ledger.submit(room.room, [token])


def test_statement_by_a_removed_member(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    old_ballot_target = room.propose("bank", MEASUREMENTS)
    remove = room.propose("bank", {"type": "remove_member", "member": room.fp("analyst")})
    room.vote("bank", remove)
    room.vote("merchant", remove)
    with pytest.raises(GovernanceError, match="not an active member"):
        room.vote("analyst", old_ballot_target)


def test_replayed_statement_is_refused(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    token = propose(room.parties["bank"], room.room, MEASUREMENTS, now=clock)
    room.submit(token)
    with pytest.raises(GovernanceError, match="replay"):
        room.submit(token)


def test_statement_for_another_room_is_refused(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    other = RoomFixture(room.ledger, clock)
    token = propose(other.parties["bank"], other.room, MEASUREMENTS, now=clock)
    with pytest.raises(GovernanceError):
        room.ledger.submit(room.room, [token])


def test_stale_or_future_statements_are_refused(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    for offset in (-3_600_000, 3_600_000):
        token = propose(
            room.parties["bank"], room.room, MEASUREMENTS, now=lambda o=offset: clock() + o
        )
        with pytest.raises(GovernanceError, match="sign it again"):
            room.submit(token)


def test_duplicate_ballots_and_non_approvers(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    pid = room.propose("bank", MEASUREMENTS)
    room.vote("bank", pid)
    with pytest.raises(GovernanceError, match="already voted"):
        room.vote("bank", pid)
    with pytest.raises(GovernanceError, match="already voted"):
        room.vote("bank", pid, approve=False)
    with pytest.raises(GovernanceError, match=r"not an active member|not an approver"):
        room.vote("auditor", pid)


def test_ballots_on_closed_proposals_and_veto_after_acceptance(
    tmp_path: Path, clock: Clock
) -> None:
    room = room_with(tmp_path, clock)
    pid = room.propose("bank", MEASUREMENTS)
    for name in ("bank", "merchant", "analyst"):
        room.vote(name, pid)
    assert room.status(pid) == "accepted"
    with pytest.raises(GovernanceError, match="accepted, not open"):
        room.vote("analyst", pid, approve=False)
    rejected = room.propose("bank", MEASUREMENTS)
    room.vote("merchant", rejected, approve=False)
    with pytest.raises(GovernanceError, match="rejected, not open"):
        room.vote("bank", rejected)
    with pytest.raises(GovernanceError, match="no proposal"):
        room.vote("bank", "f" * 64)


def test_withdraw(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    pid = room.propose("bank", MEASUREMENTS)
    with pytest.raises(GovernanceError, match="only the proposer"):
        room.submit(withdraw(room.parties["merchant"], room.room, pid, now=clock))
    room.submit(withdraw(room.parties["bank"], room.room, pid, now=clock))
    assert room.status(pid) == "withdrawn"
    with pytest.raises(GovernanceError, match="withdrawn, not open"):
        room.vote("merchant", pid)


def test_proposals_expire(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock, constitution={"rule": "default", "proposal_ttl_hours": 1})
    pid = room.propose("bank", MEASUREMENTS)
    room.vote("bank", pid)
    clock.advance(3_600_001)
    with pytest.raises(GovernanceError, match="expired, not open"):
        room.vote("merchant", pid)


def test_observers_cannot_propose(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    with pytest.raises(GovernanceError, match="observer"):
        room.propose("auditor", MEASUREMENTS)


def test_accepted_proposal_that_no_longer_applies_is_rejected(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    room.register("bank", "cards", tmp_path, voters=["bank"])
    analysis = {
        "type": "add_analysis",
        "name": "a1",
        "language": "sql",
        "text": "SELECT COUNT(*) AS n FROM cards",
        "inputs": ["cards"],
        "recipients": [room.fp("bank")],
    }
    first, second = room.propose("analyst", analysis), room.propose("analyst", analysis)
    room.vote("bank", first)
    room.vote("bank", second)
    assert room.status(first) == "accepted"
    assert room.status(second) == "rejected"
    note = room.ledger.state(room.room).proposals[second].note
    assert "no longer applicable" in note


def test_threshold_that_cannot_be_met(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(GovernanceError, match="cannot be met"):
        room_with(tmp_path, clock, constitution={"rule": "threshold", "k": 4})
    room = room_with(tmp_path / "b", clock, constitution={"rule": "threshold", "k": 3})
    with pytest.raises(GovernanceError, match="cannot be met"):
        room.propose("bank", {"type": "remove_member", "member": room.fp("merchant")})


def test_last_voter_cannot_be_removed(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock, roles={"bank": ["data_provider"], "auditor": ["observer"]})
    with pytest.raises(GovernanceError, match="no voting member"):
        room.propose("bank", {"type": "remove_member", "member": room.fp("bank")})


def test_unknown_kind_and_malformed_bodies_are_refused(tmp_path: Path, clock: Clock) -> None:
    room = room_with(tmp_path, clock)
    with pytest.raises(ValueError, match="unknown statement kind"):
        sign_statement(room.parties["bank"], room.room, "room.delete", {})
    from cleanroom.errors import DeserializationError  # noqa: PLC0415

    with pytest.raises(DeserializationError, match="vote"):
        sign_statement(
            room.parties["bank"], room.room, "ballot", {"proposal": "a" * 64, "vote": "maybe"}
        )
    with pytest.raises(DeserializationError):
        vote(room.parties["bank"], room.room, "not-a-digest", approve=True)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["payload"].update(owner="bank"),
        lambda m: m.update(payload=[]),
        lambda m: m["payload"]["owner"].update(fingerprint=7),
        lambda m: m.pop("payload"),
    ],
)
def test_malformed_manifests_are_governance_errors(tmp_path: Path, clock: Clock, edit: Any) -> None:
    room = room_with(tmp_path, clock)
    manifest = room.manifest("merchant", "customers", tmp_path)
    edit(manifest)
    with pytest.raises(GovernanceError, match="not an active member"):
        room.propose("merchant", {"type": "register_dataset", "manifest": manifest})


def test_removed_members_are_never_required_approvers(tmp_path: Path, clock: Clock) -> None:
    room = room_with(
        tmp_path,
        clock,
        roles={
            "bank": ["data_provider", "result_recipient"],
            "merchant": ["data_provider"],
            "analyst": ["analyst", "result_recipient"],
        },
    )
    room.register("merchant", "customers", tmp_path, voters=["merchant", "bank", "analyst"])
    remove = room.propose("bank", {"type": "remove_member", "member": room.fp("analyst")})
    room.vote("bank", remove)
    room.vote("merchant", remove)
    pid = room.propose(
        "merchant",
        {"type": "set_privacy_budget", "dataset": "customers", "epsilon": 1.5, "delta": 0},
    )
    assert room.ledger.state(room.room).proposals[pid].approvers == {
        room.fp("merchant"),
        room.fp("bank"),
    }
    room.vote("merchant", pid)
    room.vote("bank", pid)
    assert room.ledger.state(room.room).datasets["customers"].budget == (1.5, 0.0)


def test_removing_an_owner_ends_the_use_of_its_data_at_once(tmp_path: Path, clock: Clock) -> None:
    """The others vote a data owner out, then try to approve and run an analysis
    over its dataset: its consent was withdrawn and its deposits retired by the
    removal itself, so no analysis over it can be added or run."""
    room = room_with(tmp_path, clock)
    room.register("merchant", "customers", tmp_path, voters=["merchant", "bank"])
    remove = room.propose("bank", {"type": "remove_member", "member": room.fp("merchant")})
    for voter in sorted(room.ledger.state(room.room).proposals[remove].approvers):
        name = next(n for n, p in room.parties.items() if p.fingerprint == voter)
        room.vote(name, remove)
    state = room.ledger.state(room.room)
    assert state.members[room.fp("merchant")].status == "removed"
    assert state.datasets["customers"].consent is False
    assert not any(d.owner == room.fp("merchant") for d in state.deposits.values())
    analysis = {
        "type": "add_analysis",
        "name": "theirs",
        "language": "sql",
        "text": "SELECT COUNT(*) AS n FROM customers",
        "inputs": ["customers"],
        "recipients": [room.fp("bank")],
    }
    with pytest.raises(GovernanceError, match="revoked consent"):
        room.propose("analyst", analysis)
