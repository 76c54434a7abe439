"""The ledger's rules for owner-held key release, one check at a time, as attacks.

Each data owner signs the release of its own inputs, with the keys sealed to
the job's enclave; the job runs when every input is released. A real ledger
in process (tests.test_key_release's room), owner-mode deposits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cleanroom import Party
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.crypto.hpke import seal
from cleanroom.errors import GovernanceError
from cleanroom.governance import sign_statement
from cleanroom.protocol.sealing import open_released, release_context
from tests.rooms import Attempt
from tests.test_key_release import VIRTUAL, JobRoom

OWNERS = {"transactions": "bank", "customers": "merchant"}


@pytest.fixture
def jr(tmp_path: Path) -> JobRoom:
    """The room with both owners keeping their keys at home."""
    return JobRoom(tmp_path, release="owner")


def _body(jr: JobRoom, attempt: Attempt, names: list[str], **changes: Any) -> dict[str, Any]:
    state = jr.state
    inputs = [(n, state.datasets[n].versions[-1].digest) for n in names]
    return {
        "job": attempt.job,
        "enclave": attempt.enclave.identity_document(),
        "nonce": attempt.nonce,
        "evidence": attempt.evidence(),
        "inputs": [{"dataset": n, "manifest": m} for n, m in inputs],
        "sealed_keys": [
            {
                "dataset": n,
                "manifest": m,
                "sealed": b64url_encode(
                    seal(
                        jr.keys[n],
                        attempt.enclave.identity.encryption_key,
                        release_context(jr.room.room, attempt.job, n, m),
                    )
                ),
            }
            for n, m in inputs
        ],
        **changes,
    }


def _release(jr: JobRoom, who: str, body: dict[str, Any]) -> str:
    signers = {"service": jr.ledger.service, "broker": jr.room.broker._party}
    signer = signers[who] if who in signers else jr.room.parties[who]
    return jr.room.submit(sign_statement(signer, jr.room.room, "key.release", body, now=jr.clock))


def _attempt(jr: JobRoom) -> Attempt:
    return Attempt(jr.desk, jr.room.room, jr.request(), jr.clock)


def test_each_owner_releases_its_own_input_and_the_job_runs_when_all_are(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    _release(jr, "bank", _body(jr, attempt, ["transactions"]))
    job = jr.state.jobs[attempt.job]
    assert job.status == "requested"
    assert job.waiting_for == (jr.room.fp("merchant"),)
    _release(jr, "merchant", _body(jr, attempt, ["customers"]))
    job = jr.state.jobs[attempt.job]
    assert job.status == "running"
    assert job.waiting_for == ()
    assert [n for n, _ in job.released] == ["transactions", "customers"]
    for name, manifest in job.released:  # only the enclave opens them
        key = open_released(
            attempt.enclave,
            job.input_keys[manifest],
            room=jr.room.room,
            job=attempt.job,
            dataset=name,
            manifest=manifest,
        )
        assert key == jr.keys[name]


@pytest.mark.parametrize(
    ("who", "names", "reason"),
    [
        ("merchant", ["transactions"], "releaser's own"),  # another owner's input
        ("bank", ["transactions", "customers"], "releaser's own"),  # one's own and another's
        ("analyst", ["transactions"], "releaser's own"),  # not an owner at all
        ("service", ["transactions"], "ledger service cannot make key.release"),  # the operator
        ("broker", ["transactions"], "not a member"),  # a broker no deposit names
    ],
)
def test_nobody_releases_what_is_not_theirs(
    jr: JobRoom, who: str, names: list[str], reason: str
) -> None:
    attempt = _attempt(jr)
    with pytest.raises(GovernanceError, match=reason):
        _release(jr, who, _body(jr, attempt, names))
    assert jr.state.jobs[attempt.job].enclave is None


def test_nobody_releases_everything_at_once_past_the_owners(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    body = _body(jr, attempt, ["transactions", "customers"])
    del body["sealed_keys"]  # the old broker form: every input, keys handed over directly
    with pytest.raises(GovernanceError, match=r"ledger service cannot make key\.release"):
        _release(jr, "service", body)
    with pytest.raises(GovernanceError, match="releaser's own"):
        _release(jr, "bank", body)
    assert jr.state.jobs[attempt.job].released == ()


def test_a_second_release_must_go_to_the_same_enclave_with_the_same_nonce(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    _release(jr, "bank", _body(jr, attempt, ["transactions"]))
    rival = Attempt(jr.desk, jr.room.room, attempt.job, jr.clock)  # another enclave, nonce
    with pytest.raises(GovernanceError, match="another enclave"):
        _release(jr, "merchant", _body(jr, rival, ["customers"]))
    same_key = Attempt(jr.desk, jr.room.room, attempt.job, jr.clock, enclave=attempt.enclave)
    with pytest.raises(GovernanceError, match="another enclave"):
        _release(jr, "merchant", _body(jr, same_key, ["customers"]))  # a fresh nonce
    assert jr.state.jobs[attempt.job].status == "requested"


def test_an_input_is_released_once(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    body = _body(jr, attempt, ["transactions"])
    _release(jr, "bank", body)
    again = {**body, "evidence": attempt.evidence()}  # a new statement, same release
    with pytest.raises(GovernanceError, match="already"):
        _release(jr, "bank", again)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sealed_keys": None}, "carries its keys"),
        ({"sealed_keys": []}, "one sealed key per input"),
    ],
)
def test_an_owners_release_carries_exactly_its_sealed_keys(
    jr: JobRoom, change: dict[str, Any], reason: str
) -> None:
    attempt = _attempt(jr)
    with pytest.raises(GovernanceError, match=reason):
        _release(jr, "bank", _body(jr, attempt, ["transactions"], **change))


def test_sealed_keys_for_other_inputs_are_refused(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    body = _body(jr, attempt, ["transactions"])
    other = _body(jr, attempt, ["customers"])["sealed_keys"]
    with pytest.raises(GovernanceError, match="one sealed key per input"):
        _release(jr, "bank", {**body, "sealed_keys": other})
    doubled = body["sealed_keys"] * 2
    with pytest.raises(GovernanceError, match="one sealed key per input"):
        _release(jr, "bank", {**body, "sealed_keys": doubled})


def test_no_release_after_consent_is_revoked_or_the_job_ended(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    _release(jr, "bank", _body(jr, attempt, ["transactions"]))
    jr.room.submit(
        sign_statement(
            jr.room.parties["merchant"],
            jr.room.room,
            "consent.revoke",
            {"dataset": "customers"},
            now=jr.clock,
        )
    )
    with pytest.raises(GovernanceError, match="revoked consent"):
        _release(jr, "merchant", _body(jr, attempt, ["customers"]))
    deny = {"job": attempt.job, "reason": "consent revoked"}
    jr.room.submit(
        sign_statement(jr.room.parties["bank"], jr.room.room, "key.deny", deny, now=jr.clock)
    )
    assert jr.state.jobs[attempt.job].status == "failed"


def test_an_owner_may_deny_only_jobs_that_read_its_data(jr: JobRoom) -> None:
    attempt = _attempt(jr)
    outsider = Party.create("outsider")
    assert outsider.fingerprint not in jr.state.members
    deny = {"job": attempt.job, "reason": "no"}
    with pytest.raises(GovernanceError, match="only the owner"):
        jr.room.submit(
            sign_statement(jr.room.parties["analyst"], jr.room.room, "key.deny", deny, now=jr.clock)
        )
    jr.room.submit(
        sign_statement(jr.room.parties["merchant"], jr.room.room, "key.deny", deny, now=jr.clock)
    )
    assert jr.state.jobs[attempt.job].status == "failed"
    assert jr.state.jobs[attempt.job].reason == "key release denied: no"


def test_a_deposit_names_its_release_mode_consistently() -> None:
    from cleanroom.governance.statements import KeyDeposit  # noqa: PLC0415

    base = {
        "dataset": "d",
        "manifest": canonical_digest({"x": 1}),
        "policy": {"platforms": VIRTUAL},
    }
    with pytest.raises(ValueError, match="owner deposit carries neither"):
        KeyDeposit.model_validate({**base, "release": "owner", "sealed_key": "A" * 60})
    with pytest.raises(ValueError, match="carries the key sealed to an attested broker"):
        KeyDeposit.model_validate({**base, "release": "broker"})
    with pytest.raises(ValueError, match="carries the key sealed to an attested broker"):
        KeyDeposit.model_validate({**base, "release": "broker", "sealed_key": "A" * 60})
    assert KeyDeposit.model_validate({**base, "release": "owner"}).sealed_key is None


@pytest.mark.parametrize("dataset", ["transactions", "customers"])
def test_a_member_cannot_replace_another_owners_deposit(jr: JobRoom, dataset: str) -> None:
    """The merchant names the bank's manifest (under either dataset name) to swap its
    owner-held deposit for a broker deposit: refused, the bank's deposit stays."""
    manifest = jr.state.datasets["transactions"].versions[-1].digest
    body = {
        "dataset": dataset,
        "manifest": manifest,
        "release": "broker",
        "sealed_key": "A" * 60,
        "broker": jr.room.broker.offer("n" * 16),
        "policy": {"platforms": VIRTUAL},
    }
    with pytest.raises(GovernanceError, match=r"another member|not a version"):
        jr.room.submit(
            sign_statement(
                jr.room.parties["merchant"], jr.room.room, "key.deposit", body, now=jr.clock
            )
        )
    deposit = jr.state.deposits[manifest]
    assert (deposit.owner, deposit.release) == (jr.room.fp("bank"), "owner")


def test_a_key_deposited_with_the_broker_cannot_be_called_home(tmp_path: Path) -> None:
    """Switching a broker deposit to owner-held would not protect the key (the
    broker's copy stays on the ledger): refused; a new version has a new key."""
    room = JobRoom(tmp_path)  # broker deposits
    manifest = room.state.datasets["transactions"].versions[-1].digest
    body = {
        "dataset": "transactions",
        "manifest": manifest,
        "release": "owner",
        "policy": {"platforms": VIRTUAL},
    }
    with pytest.raises(GovernanceError, match="new version"):
        room.room.submit(
            sign_statement(
                room.room.parties["bank"], room.room.room, "key.deposit", body, now=room.clock
            )
        )
    assert room.state.deposits[manifest].release == "broker"


def test_a_deposit_must_name_a_manifest_of_the_authors_dataset(jr: JobRoom) -> None:
    body = {
        "dataset": "transactions",
        "manifest": canonical_digest({"made": "up"}),
        "release": "owner",
        "policy": {"platforms": VIRTUAL},
    }
    with pytest.raises(GovernanceError, match="not a version"):
        jr.room.submit(
            sign_statement(jr.room.parties["bank"], jr.room.room, "key.deposit", body, now=jr.clock)
        )


def test_a_job_keeps_the_inputs_of_its_first_release(jr: JobRoom, tmp_path: Path) -> None:
    """A new version registered between two owners' releases: the job's inputs were
    fixed by the first release (else the first dataset's budget could be charged
    twice and the job never complete); the later release is refused."""
    attempt = _attempt(jr)
    _release(jr, "bank", _body(jr, attempt, ["transactions"]))
    pid = jr.room.register("bank", "transactions", tmp_path / "v3", ["bank"])
    assert jr.room.status(pid) == "accepted"
    body = {
        "dataset": "transactions",
        "manifest": jr.state.datasets["transactions"].versions[-1].digest,
        "release": "owner",
        "policy": {"platforms": VIRTUAL},
    }
    jr.room.submit(
        sign_statement(jr.room.parties["bank"], jr.room.room, "key.deposit", body, now=jr.clock)
    )
    with pytest.raises(GovernanceError, match="changed since its first release"):
        _release(jr, "merchant", _body(jr, attempt, ["customers"]))
