"""The attested key broker's own checks, one at a time, without the service.

The ledger accepts a deposit sealed to a broker only if the broker's evidence
verifies, binds its key and the depositor's nonce, and passes the room's
contract and the deposit's own policy; a broker signs releases and denials
only for jobs that need its keys, and answers a request only from a ledger it
verified itself, never rolled back. The broker process answers junk with
fixed categories, and a broker that restarts has a new key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.attestation import VirtualPlatform
from cleanroom.broker.__main__ import handle
from cleanroom.broker.attested import AttestedBroker
from cleanroom.broker.link import BrokerLink
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.errors import GovernanceError, RollbackError
from cleanroom.governance import sign_statement
from cleanroom.governance.statements import parse_statement
from tests.rooms import CODE, Attempt, Clock
from tests.test_key_release import OTHER_CODE, VIRTUAL, JobRoom

Offer = Callable[[JobRoom], dict[str, Any]]


def _offer(jr: JobRoom, broker: AttestedBroker | None = None, nonce: str = "n" * 20) -> Any:
    return (broker or jr.room.broker).offer(nonce)


def _other_broker(jr: JobRoom, measurement: str = CODE, clock: Clock | None = None) -> Any:
    platform = VirtualPlatform(measurement, now=clock or jr.clock)
    return AttestedBroker(platform, jr.ledger.service.identity, clock=jr.clock)


def _swap_identity(jr: JobRoom) -> dict[str, Any]:
    offer = _offer(jr)
    return {**offer, "identity": _other_broker(jr).identity}  # evidence binds another key


def _member_key(jr: JobRoom) -> dict[str, Any]:
    broker = _other_broker(jr)
    broker._party = jr.room.parties["bank"]  # a broker "attested" with a member's key
    return _offer(jr, broker)


def _enclave_evidence(jr: JobRoom) -> dict[str, Any]:
    """An approved enclave's evidence naming the job "key-broker", the operator's
    try to pass an enclave off as a broker: its binding has another shape."""
    from cleanroom.attestation import binding  # noqa: PLC0415

    enclave = Party.create("enclave")
    nonce = "n" * 20
    report = binding(nonce=nonce, tee_pubkey=enclave.fingerprint, job="key-broker")
    evidence = VirtualPlatform(CODE, now=jr.clock).attest(report)
    return {"identity": enclave.identity_document(), "nonce": nonce, "evidence": evidence}


def _stale(jr: JobRoom) -> dict[str, Any]:
    old = Clock(jr.clock.now - 11 * 60 * 1000)  # evidence older than 10 minutes
    return _offer(jr, _other_broker(jr, clock=old))


OFFERS: dict[str, tuple[Callable[[JobRoom], dict[str, Any]], str]] = {
    "evidence bound to another nonce": (
        lambda jr: {**_offer(jr), "nonce": "m" * 20},
        "does not bind this nonce",
    ),
    "evidence of another broker's key": (_swap_identity, "does not bind this nonce"),
    "a measurement the contract does not approve": (
        lambda jr: _offer(jr, _other_broker(jr, OTHER_CODE)),
        "is not approved",
    ),
    "stale evidence": (_stale, "stale or from the future"),
    "an enclave's evidence": (_enclave_evidence, "does not bind this nonce and key broker key"),
    "a member's key": (_member_key, "a key broker's key must be its own"),
    "tampered evidence": (
        lambda jr: {**_offer(jr), "evidence": {"format": "insecure-virtual", "token": "x.y.z"}},
        "does not verify",
    ),
}


def _deposit(jr: JobRoom, offer: dict[str, Any], **policy: Any) -> str:
    state = jr.state
    manifest = state.datasets["transactions"].versions[-1].digest
    body = {
        "dataset": "transactions",
        "manifest": manifest,
        "release": "broker",
        "sealed_key": "A" * 60,
        "broker": offer,
        "policy": {"platforms": VIRTUAL, **policy},
    }
    party = jr.room.parties["bank"]
    return jr.room.submit(sign_statement(party, jr.room.room, "key.deposit", body, now=jr.clock))


@pytest.mark.parametrize("attack", sorted(OFFERS))
def test_a_deposit_to_a_broker_that_is_not_attested_is_refused(tmp_path: Path, attack: str) -> None:
    jr = JobRoom(tmp_path)
    make, reason = OFFERS[attack]
    before = dict(jr.state.deposits)
    with pytest.raises(GovernanceError, match=reason):
        _deposit(jr, make(jr))
    assert jr.state.deposits == before  # a refused deposit changes nothing


def test_a_deposit_policy_decides_which_broker_may_hold_the_key(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    with pytest.raises(GovernanceError, match="deposit's own policy does not allow"):
        _deposit(jr, _offer(jr), measurements=[OTHER_CODE])
    _deposit(jr, _offer(jr), measurements=[CODE])  # the broker's own measurement: accepted


def test_a_broker_releases_only_from_a_ledger_that_never_shrinks(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    old = jr.ledger.export(jr.room.room)
    job = jr.request()
    attempt = Attempt(jr.desk, jr.room.room, job, jr.clock)
    request = {
        "job": job,
        "enclave": attempt.enclave.identity_document(),
        "nonce": attempt.nonce,
        "evidence": attempt.evidence(),
    }
    broker = jr.room.broker
    statement = broker.answer(jr.ledger.export(jr.room.room), request)
    assert statement is not None
    assert parse_statement(statement).kind == "key.release"
    with pytest.raises(RollbackError):
        broker.answer(old, request)  # the operator shows an older ledger


def test_a_broker_ignores_bad_requests_and_denies_what_the_rules_refuse(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    job = jr.request()
    attempt = Attempt(jr.desk, jr.room.room, job, jr.clock)
    request = {
        "job": job,
        "enclave": attempt.enclave.identity_document(),
        "nonce": attempt.nonce,
        "evidence": attempt.evidence(),
    }
    broker = jr.room.broker
    export = jr.ledger.export
    # bad in itself (anyone could forge it): no statement at all
    assert broker.answer(export(jr.room.room), {**request, "nonce": "z" * 43}) is None
    assert broker.answer(export(jr.room.room), {**request, "job": "0" * 64}) is None
    # refused by the room's rules: a denial signed by the broker ends the job
    jr.room.revoke("merchant", "customers")
    denial = broker.answer(export(jr.room.room), request)
    assert denial is not None
    parsed = parse_statement(denial)
    assert (parsed.kind, parsed.author) == ("key.deny", broker.fingerprint)
    jr.room.submit(denial)
    assert jr.state.jobs[job].status == "failed"
    assert "revoked consent" in jr.state.jobs[job].reason


def test_a_broker_speaks_only_for_jobs_that_need_its_keys(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path, release="owner")  # nothing deposited with any broker
    job = jr.request()
    stranger = JobRoom(tmp_path / "other").room.broker  # known in another room only
    deny = {"job": job, "reason": "no"}
    with pytest.raises(GovernanceError, match="not a member"):
        jr.room.submit(
            sign_statement(stranger._party, jr.room.room, "key.deny", deny, now=jr.clock)
        )
    # a broker this room knows, whose deposits were all moved to another broker
    moved = JobRoom(tmp_path / "moved")
    old = moved.room.broker
    moved.room.broker = _other_broker(moved)
    for owner, name in (("bank", "transactions"), ("merchant", "customers")):
        version = moved.state.datasets[name].versions[-1]
        moved.room.submit(_redeposit(moved, owner, name, version.digest))
    job = moved.request()
    deny = {"job": job, "reason": "no"}
    with pytest.raises(GovernanceError, match="can deny only jobs that need its keys"):
        moved.room.submit(
            sign_statement(old._party, moved.room.room, "key.deny", deny, now=moved.clock)
        )
    # and a broker makes no other kind of statement
    revoke = {"dataset": "transactions"}
    with pytest.raises(GovernanceError, match=r"key broker cannot make consent\.revoke"):
        moved.room.submit(
            sign_statement(old._party, moved.room.room, "consent.revoke", revoke, now=moved.clock)
        )
    assert moved.state.jobs[job].status == "requested"


def _redeposit(jr: JobRoom, owner: str, name: str, manifest: str) -> str:
    from cleanroom.identities.identity import PublicIdentity  # noqa: PLC0415
    from cleanroom.protocol.sealing import seal_deposit  # noqa: PLC0415

    offer = jr.room.broker.offer("r" * 20)
    broker = PublicIdentity.from_document(offer["identity"])
    body = {
        "dataset": name,
        "manifest": manifest,
        "release": "broker",
        "sealed_key": seal_deposit(
            jr.keys[name], broker, room=jr.room.room, dataset=name, manifest=manifest
        ),
        "broker": offer,
        "policy": {"platforms": VIRTUAL},
    }
    return sign_statement(jr.room.parties[owner], jr.room.room, "key.deposit", body, now=jr.clock)


def test_the_broker_process_answers_junk_with_fixed_categories(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    broker = jr.room.broker
    export = jr.ledger.export(jr.room.room)
    tampered = json.loads(json.dumps(export))
    tampered["entries"][0]["statement"] = tampered["entries"][1]["statement"]
    cases = {
        "not json": {"error": "bad request"},
        "[1, 2]": {"error": "bad request"},
        json.dumps({"op": "launch"}): {"error": "bad request"},
        json.dumps({"op": "offer", "nonce": "short"}): {"error": "bad request"},
        json.dumps({"op": "answer", "export": [], "request": {}}): {"error": "bad request"},
        json.dumps({"op": "answer", "export": tampered, "request": {"job": "x"}}): {
            "error": "the ledger does not verify"
        },
    }
    for line, expected in cases.items():
        assert handle(broker, line) == expected, line
    offer = handle(broker, json.dumps({"op": "offer", "nonce": "n" * 20}))["offer"]
    assert offer["identity"] == broker.identity


def test_a_broker_process_that_dies_comes_back_with_a_new_key() -> None:
    service = Party.create("service")
    link = BrokerLink(service.identity_document(), platform="insecure-virtual")
    try:
        first = link.fingerprint
        offer = link.offer("n" * 20)
        assert canonical_digest(offer["identity"]) == canonical_digest(
            link.offer("m" * 20)["identity"]
        )
        assert link._process is not None
        link._process.kill()
        link._process.wait()
        link.offer("n" * 20)  # started again
        assert link.fingerprint != first
    finally:
        link.close()


def test_no_member_can_be_added_with_a_broker_key(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    broker = jr.room.broker._party
    action = {"type": "add_member", "identity": broker.identity_document(), "roles": ["analyst"]}
    with pytest.raises(GovernanceError, match="a key broker's or the service's"):
        jr.room.propose("bank", action)


def test_an_enclave_attests_only_for_a_job_id() -> None:
    """The job runner passes the job id on the command line: an enclave refuses
    anything but a job id, before it attests (its evidence binds that id)."""
    from cleanroom.enclave.runtime import run_job  # noqa: PLC0415
    from cleanroom.errors import IntegrityError  # noqa: PLC0415

    for job in ("key-broker", "A" * 64, "0" * 63):
        with pytest.raises(IntegrityError, match="64 lowercase hex digits"):
            run_job(
                "http://127.0.0.1:9", "0" * 32, job, launch_token="t", attester=VirtualPlatform()
            )
