"""A room's contract approves attestation terms besides the measurement (host
data, SEV-SNP TCB minimums and VMPL, report version, TDX MRCONFIGID and
RTMRs), voted like any contract change; a key goes only to evidence that meets
every term, and malformed terms are refused when proposed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cleanroom.errors import AuthorizationError, DeserializationError
from cleanroom.governance.views import room_view
from tests.rooms import CODE, Attempt
from tests.test_key_release import JobRoom

HOST_DATA = "ab" * 32


def _terms(jr: JobRoom, terms: dict[str, Any]) -> str:
    pid = jr.room.propose(
        "analyst",
        {
            "type": "set_measurements",
            "measurements": [{"platform": "insecure-virtual", "value": CODE}],
            "allow_insecure_virtual": True,
            "terms": terms,
        },
    )
    for voter in ("bank", "merchant", "analyst"):
        jr.room.vote(voter, pid)
    return pid


def test_a_key_goes_only_to_evidence_with_the_approved_host_data(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path, release="owner")  # the owners' agents release
    _terms(jr, {"host_data": HOST_DATA})
    assert room_view(jr.state)["attestation_terms"] == {"host_data": HOST_DATA}
    refused = jr.request()
    attempt = Attempt(jr.desk, jr.room.room, refused, jr.clock)
    with pytest.raises(AuthorizationError, match=f"host_data: expected {HOST_DATA}"):
        attempt.release()
    assert jr.state.jobs[refused].status == "failed"
    # the same job shape, evidence carrying the approved host data: the request is
    # accepted and waits for the owners' releases
    job = jr.request()
    attempt = Attempt(jr.desk, jr.room.room, job, jr.clock)
    evidence = _with_host_data(jr, attempt, HOST_DATA)
    assert attempt.release(evidence)["status"] == "requested"
    assert jr.state.jobs[job].status == "requested"


def test_a_broker_the_contract_no_longer_approves_releases_nothing(tmp_path: Path) -> None:
    """The broker was approved when the keys were deposited; the room then adds a
    term its evidence does not meet: every release through it is refused until the
    owners deposit again (with a broker that meets the contract)."""
    jr = JobRoom(tmp_path)  # keys deposited with the attested broker
    _terms(jr, {"host_data": HOST_DATA})
    job = jr.request()
    attempt = Attempt(jr.desk, jr.room.room, job, jr.clock)
    with pytest.raises(AuthorizationError, match="key broker holding the key of"):
        attempt.release(_with_host_data(jr, attempt, HOST_DATA))
    assert jr.state.jobs[job].status == "failed"
    assert jr.state.jobs[job].released == ()


def _with_host_data(jr: JobRoom, attempt: Attempt, host_data: str) -> dict[str, Any]:
    from cleanroom.attestation import VirtualPlatform, binding  # noqa: PLC0415

    report = binding(nonce=attempt.nonce, tee_pubkey=attempt.enclave.fingerprint, job=attempt.job)
    return VirtualPlatform(CODE, now=jr.clock).attest(report, host_data=host_data)


def test_a_term_of_another_platform_refuses_the_evidence(tmp_path: Path) -> None:
    """A VMPL term is SEV-SNP's: evidence of any other platform fails it rather
    than skipping it."""
    jr = JobRoom(tmp_path)
    _terms(jr, {"vmpl": 0})
    job = jr.request()
    with pytest.raises(AuthorizationError, match="a sev-snp term"):
        Attempt(jr.desk, jr.room.room, job, jr.clock).release()


@pytest.mark.parametrize(
    ("terms", "reason"),
    [
        ({}, "no terms would check nothing"),
        ({"min_tcb": {"kernel": 3}}, "unknown components"),
        ({"mrconfigid": "ab" * 8}, "48 bytes"),
        ({"vmpl": 7}, "from 0 to 3"),
        ({"rtmrs": {"4": "ab" * 48}}, "rtmrs"),
        ({"host_data": "not hex"}, "hex string"),
    ],
)
def test_malformed_terms_are_refused_when_proposed(
    tmp_path: Path, terms: dict[str, Any], reason: str
) -> None:
    jr = JobRoom(tmp_path)
    before = dict(jr.state.proposals)
    with pytest.raises(DeserializationError, match=reason):
        _terms(jr, terms)
    assert jr.state.proposals == before
    assert jr.state.terms is None
