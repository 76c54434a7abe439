"""A releaser never releases a job twice, whatever the operator shows it.

The operator carries every statement to the ledger. It keeps a signed release
off the ledger and asks again: for a second enclave of the same job, or for
the next job while the withheld release never charged the DP budget. The
attested broker (in memory) and each owner's key agent (in a file beside its
vault) remember what they signed and refuse (tests/test_broker_rules.py has
the broker's other checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cleanroom.broker.memory import ReleaseMemory, WithheldError
from cleanroom.errors import GovernanceError, IntegrityError
from cleanroom.governance import sign_statement
from cleanroom.governance.statements import parse_statement
from tests.rooms import Attempt
from tests.test_key_release import JobRoom


def _request(jr: JobRoom, job: str) -> dict[str, Any]:
    attempt = Attempt(jr.desk, jr.room.room, job, jr.clock)
    return {
        "job": job,
        "enclave": attempt.enclave.identity_document(),
        "nonce": attempt.nonce,
        "evidence": attempt.evidence(),
    }


def _fail(jr: JobRoom, job: str) -> None:
    body = {"job": job, "reason": "time limit"}
    jr.room.submit(sign_statement(jr.ledger.service, jr.room.room, "job.fail", body, now=jr.clock))


def test_a_withheld_broker_release_is_never_followed_by_another(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    broker, export = jr.room.broker, jr.ledger.export
    job = jr.request()
    first = _request(jr, job)
    release = broker.answer(export(jr.room.room), first)
    assert release is not None
    assert parse_statement(release).kind == "key.release"
    # the operator keeps it off the ledger and asks again, for a second enclave
    assert broker.answer(export(jr.room.room), _request(jr, job)) is None
    # the same request is answered with the same statement, never a new one
    assert broker.answer(export(jr.room.room), first) == release
    # nothing for any other job of the room while it is missing
    other = jr.request()
    assert broker.answer(export(jr.room.room), _request(jr, other)) is None
    # the operator fails the job it ran with those keys: withheld, the room is refused
    _fail(jr, job)
    with pytest.raises(WithheldError, match="withheld"):
        broker.answer(export(jr.room.room), _request(jr, other))
    later = _request(jr, jr.request())
    with pytest.raises(WithheldError, match="refused"):
        broker.answer(export(jr.room.room), later)


def test_a_recorded_release_lets_the_broker_go_on(tmp_path: Path) -> None:
    jr = JobRoom(tmp_path)
    broker, export = jr.room.broker, jr.ledger.export
    job = jr.request()
    release = broker.answer(export(jr.room.room), _request(jr, job))
    assert release is not None
    jr.room.submit(release)
    assert jr.state.jobs[job].status == "running"
    other = jr.request()
    answer = broker.answer(export(jr.room.room), _request(jr, other))
    assert answer is not None
    assert parse_statement(answer).kind == "key.release"


def test_an_agents_memory_survives_its_restart(tmp_path: Path) -> None:
    """The owner's agent keeps the record in a file: a restarted agent still knows
    the release it signed, and a record that is not one is refused."""
    jr = JobRoom(tmp_path, release="owner")
    path = tmp_path / "released.json"
    job = jr.request()
    request = _request(jr, job)
    # (any signed statement stands for the release here: it is never on the ledger)
    token = sign_statement(
        jr.room.parties["bank"], jr.room.room, "key.deny", {"job": job, "reason": "x"}
    )
    from cleanroom.identities.identity import PublicIdentity  # noqa: PLC0415

    fingerprint = PublicIdentity.from_document(request["enclave"]).fingerprint
    ReleaseMemory(path).remember(jr.room.room, job, fingerprint, request["nonce"], token)
    again = ReleaseMemory(path)  # the agent restarted
    assert again.check(jr.state, job, fingerprint, request["nonce"]) == token
    with pytest.raises(GovernanceError, match="another enclave"):
        again.check(jr.state, job, "f" * 64, request["nonce"])
    with pytest.raises(GovernanceError, match="earlier release is not on the ledger"):
        again.check(jr.state, jr.request(), fingerprint, request["nonce"])
    _fail(jr, job)
    with pytest.raises(WithheldError):
        again.check(jr.state, job, fingerprint, request["nonce"])
    with pytest.raises(WithheldError, match="refused"):
        ReleaseMemory(path).check(jr.state, jr.request(), fingerprint, "n")  # kept refused
    path.write_text('{"rooms": 5}')
    with pytest.raises(IntegrityError, match="not a record of released keys"):
        ReleaseMemory(path)
