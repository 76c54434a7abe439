"""The key broker and the ledger rules for key release and jobs, as attacks.

A real ledger (SQLite) and a real broker in process; enclaves are ephemeral
parties attesting with the virtual platform at an injected clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom import Party, Schema, seal_dataset
from cleanroom.attestation import VirtualPlatform, binding, verify_evidence
from cleanroom.attestation.virtual import EVIDENCE_TYP, KEY_ID
from cleanroom.broker.desk import KeyDesk
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_digest, canonical_json
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.datasets.seal import unseal_key
from cleanroom.errors import (
    AttestationError,
    AuthenticationError,
    AuthorizationError,
    GovernanceError,
)
from cleanroom.governance import parse_statement, sign_statement
from cleanroom.governance.statements import request_job
from cleanroom.ledger import verify_export
from cleanroom.protocol.requests import sign_request
from cleanroom.protocol.sealing import open_released
from cleanroom.service.app import Service, create_app
from cleanroom.service.blobs import LocalBlobStore
from cleanroom.service.jobs import JobRunner, RunnerSettings
from tests.rooms import CODE, Attempt, Clock, RoomFixture, make_ledger
from tests.test_ledger import resign, tokens_of

OTHER_CODE = "insecure-virtual:" + "ab" * 48
SQL = "SELECT count(*) FROM transactions JOIN customers USING (id)"
SCHEMA = Schema.from_json(
    {"identity_column": "id", "columns": [{"name": "id", "type": "string", "nullable": False}]}
)
VIRTUAL = ["sev-snp", "insecure-virtual"]


class JobRoom:
    """A room with two datasets, keys deposited, a measurement and an analysis approved."""

    def __init__(
        self,
        tmp: Path,
        *,
        approved: list[dict[str, str]] | None = None,
        allow_virtual: bool = True,
        platforms: list[str] | None = None,
        release: str = "broker",
    ) -> None:
        self.clock = Clock()
        self.release = release
        self.room = RoomFixture(make_ledger(tmp / "ledger", self.clock), self.clock)
        self.ledger = self.room.ledger
        self.keys: dict[str, bytes] = {}
        default = [{"platform": "insecure-virtual", "value": CODE}]
        # the attested broker (insecure virtual here) must be approved to take deposits
        self.contract(default, allow_virtual=True)
        for owner, name in (("bank", "transactions"), ("merchant", "customers")):
            self._publish(owner, name, tmp, platforms or VIRTUAL)
        if (approved or default, allow_virtual) != (default, True):
            self.contract(approved or default, allow_virtual=allow_virtual)
        pid = self.room.propose(
            "analyst",
            {
                "type": "add_analysis",
                "name": "count",
                "language": "sql",
                "text": SQL,
                "inputs": ["transactions", "customers"],
                "recipients": [self.room.fp("bank")],
            },
        )
        for voter in ("bank", "merchant"):
            self.room.vote(voter, pid)
        self.desk = KeyDesk(self.ledger, broker=self.room.broker, clock=self.clock)

    def contract(self, measurements: list[dict[str, str]], *, allow_virtual: bool) -> None:
        pid = self.room.propose(
            "analyst",
            {
                "type": "set_measurements",
                "measurements": measurements,
                "allow_insecure_virtual": allow_virtual,
            },
        )
        for voter in ("bank", "merchant", "analyst"):
            self.room.vote(voter, pid)

    def _publish(self, owner: str, name: str, tmp: Path, platforms: list[str]) -> None:
        party = self.room.parties[owner]
        out = tmp / name
        sealed = seal_dataset(
            pa.table({"id": ["a", "b"]}), schema=SCHEMA, owner=party, output=out, name=name
        )
        manifest = json.loads((out / "manifest.json").read_text())
        self.room.register(owner, name, tmp / "again", [])  # a second version, never approved
        pid = self.room.propose(owner, {"type": "register_dataset", "manifest": manifest})
        for voter in {owner, "bank"}:
            self.room.vote(voter, pid)
        key = unseal_key(out, sealed.manifest, party)
        self.keys[name] = key
        if self.release == "broker":
            self.room.deposit(owner, name, manifest, key, platforms)
            return
        body = {  # owner-held: the key stays with the owner, who releases it itself
            "dataset": name,
            "manifest": canonical_digest(manifest),
            "release": "owner",
            "policy": {"platforms": platforms},
        }
        self.room.submit(sign_statement(party, self.room.room, "key.deposit", body, now=self.clock))

    @property
    def state(self) -> Any:
        return self.ledger.state(self.room.room)

    def request(self) -> str:
        digest = hashlib.sha256(SQL.encode()).hexdigest()
        return self.room.submit(
            request_job(
                self.room.parties["analyst"], self.room.room, "count", digest, now=self.clock
            )
        )

    def attempt(
        self,
        job: str,
        *,
        measurement: str = CODE,
        enclave: Party | None = None,
        evidence: dict[str, Any] | None = None,
        nonce: str | None = None,
        bind_nonce: str | None = None,
    ) -> tuple[Party, dict[str, Any]]:
        attempt = Attempt(self.desk, self.room.room, job, self.clock)
        if enclave is not None:
            attempt.enclave = enclave
        evidence = evidence or attempt.evidence(measurement, nonce=bind_nonce)
        return attempt.enclave, attempt.release(evidence, nonce=nonce)


def kinds(job_room: JobRoom) -> list[str]:
    return [parse_statement(e.statement).kind for e in job_room.ledger.entries(job_room.room.room)]


@pytest.fixture
def jr(tmp_path: Path) -> JobRoom:
    return JobRoom(tmp_path)


def test_an_attested_enclave_gets_exactly_the_deposited_keys(jr: JobRoom) -> None:
    job = jr.request()
    enclave, released = jr.attempt(job)
    assert released == {"status": "running", "waiting_for": [], "stale": []}
    assert kinds(jr)[-1] == "key.release"
    state = jr.state
    assert state.jobs[job].status == "running"
    assert state.jobs[job].enclave.fingerprint == enclave.fingerprint
    assert state.jobs[job].assurance == "insecure-virtual"
    # the release is signed by the attested broker the keys were deposited with
    last = parse_statement(jr.ledger.entries(jr.room.room)[-1].statement)
    assert last.author == jr.room.broker.fingerprint
    assert last.author not in (jr.ledger.service.fingerprint, *state.members)
    assert sorted(state.jobs[job].released) == sorted(jr.state.job_inputs(job))
    for name, manifest in state.jobs[job].released:
        key = open_released(
            enclave,
            state.jobs[job].input_keys[manifest],
            room=jr.room.room,
            job=job,
            dataset=name,
            manifest=manifest,
        )
        assert key == jr.keys[name]
    # the released key is bound to its job: it does not open for another
    name, manifest = state.jobs[job].released[0]
    with pytest.raises(Exception, match="decryption failed"):
        open_released(
            enclave,
            state.jobs[job].input_keys[manifest],
            room=jr.room.room,
            job="0" * 64,
            dataset=name,
            manifest=manifest,
        )


def _forged_evidence(clock: Clock, report: bytes) -> dict[str, Any]:
    payload = {
        "platform": "insecure-virtual",
        "measurement": CODE,
        "report_data": b64url_encode(report),
        "host_data": "",
        "created_at": clock(),
    }
    token = jws.sign(
        canonical_json(payload), Ed25519PrivateKey.generate(), kid=KEY_ID, typ=EVIDENCE_TYP
    )
    return {"format": "insecure-virtual", "token": token}


DENIALS: dict[str, tuple[Any, str]] = {
    "measurement of other code": (
        lambda jr, job: jr.attempt(job, measurement=OTHER_CODE),
        "not approved",
    ),
    "evidence binding another nonce": (
        lambda jr, job: jr.attempt(job, bind_nonce=b64url_encode(b"\x01" * 32)),
        "does not bind",
    ),
    "evidence signed by another key": (
        lambda jr, job: jr.attempt(job, evidence=_forged_evidence(jr.clock, bytes(64))),
        "does not verify",
    ),
    "evidence of an unknown format": (
        lambda jr, job: jr.attempt(job, evidence={"format": "sgx-epid", "quote": "AA"}),
        "unknown evidence format",
    ),
    "a nonce never issued": (
        lambda jr, job: jr.attempt(job, nonce=b64url_encode(b"\x02" * 32)),
        "not issued",
    ),
    "an enclave key that is a member's": (
        lambda jr, job: jr.attempt(job, enclave=jr.room.parties["analyst"]),
        "fresh",
    ),
}


@pytest.mark.parametrize("case", sorted(DENIALS))
def test_denials_release_nothing_and_are_recorded(jr: JobRoom, case: str) -> None:
    attack, reason = DENIALS[case]
    job = jr.request()
    with pytest.raises(AuthorizationError, match=reason):
        attack(jr, job)
    assert kinds(jr)[-1] == "key.deny"
    state = jr.state
    assert state.jobs[job].status == "failed"
    assert reason in state.jobs[job].reason
    assert "key.release" not in kinds(jr)


def test_stale_evidence_and_expired_nonces_are_denied(jr: JobRoom) -> None:
    late = Attempt(jr.desk, jr.room.room, jr.request(), jr.clock)
    jr.clock.advance(61_000)
    with pytest.raises(AuthorizationError, match="nonce expired"):
        late.release()
    stale = Attempt(jr.desk, jr.room.room, jr.request(), jr.clock)
    with pytest.raises(AuthorizationError, match="stale"):
        stale.release(stale.evidence(at=Clock(jr.clock() - 11 * 60_000)))


def test_a_wrong_launch_token_gets_no_nonce_and_leaves_no_entry(jr: JobRoom) -> None:
    job = jr.request()
    jr.desk.launch(jr.room.room, job)
    size = jr.ledger.size(jr.room.room)
    with pytest.raises(AuthenticationError, match="launch"):
        jr.desk.challenge(jr.room.room, job, "not-the-token-at-all")
    with pytest.raises(AuthenticationError, match="launch"):
        jr.desk.release(
            jr.room.room, job, token="guess" * 8, nonce="n" * 43, enclave={}, evidence={}
        )
    assert jr.ledger.size(jr.room.room) == size
    assert jr.state.jobs[job].status == "requested"


def test_a_nonce_is_single_use_and_a_running_job_gets_no_second_release(jr: JobRoom) -> None:
    job = jr.request()
    attempt = Attempt(jr.desk, jr.room.room, job, jr.clock)
    attempt.release()
    second_token = jr.desk.launch(jr.room.room, job)
    with pytest.raises(AuthorizationError, match="not issued"):
        attempt.release(token=second_token)
    assert kinds(jr).count("key.release") == 1
    assert jr.state.jobs[job].status == "running"


def test_without_explicit_consent_the_virtual_platform_is_refused(tmp_path: Path) -> None:
    hardware_only = JobRoom(
        tmp_path, approved=[{"platform": "sev-snp", "value": "cd" * 48}], allow_virtual=False
    )
    job = hardware_only.request()
    with pytest.raises(AuthorizationError, match="insecure virtual platform"):
        hardware_only.attempt(job)
    assert hardware_only.state.jobs[job].status == "failed"


def test_an_owner_policy_without_the_platform_keeps_its_key(tmp_path: Path) -> None:
    strict = JobRoom(tmp_path, platforms=["sev-snp", "tdx"], release="owner")
    job = strict.request()
    with pytest.raises(AuthorizationError, match="releases its key to"):
        strict.attempt(job)


def test_a_key_is_never_deposited_with_a_broker_its_owner_policy_does_not_allow(
    tmp_path: Path,
) -> None:
    """The broker runs on the insecure virtual platform; an owner that releases to
    hardware platforms only cannot seal its key to it (the ledger refuses)."""
    with pytest.raises(GovernanceError, match="deposit's own policy does not allow"):
        JobRoom(tmp_path, platforms=["sev-snp", "tdx"])


def test_consent_revoked_after_the_request_denies_the_release(jr: JobRoom) -> None:
    job = jr.request()
    jr.room.revoke("merchant", "customers")
    with pytest.raises(AuthorizationError, match="revoked consent"):
        jr.attempt(job)
    with pytest.raises(GovernanceError, match="revoked consent"):
        jr.request()  # new jobs are refused at once


def _complete(jr: JobRoom, job: str, enclave: Party, **changes: Any) -> str:
    state = jr.state
    body = {
        "job": job,
        "output": {
            "sha256": "0" * 64,
            "bytes": 4096,  # buckets, as the enclave publishes them
            "rows": 16,
            "columns": [{"name": "n", "type": "int64"}],
            "key_id": "k",
        },
        "sealed_keys": [{"recipient": jr.room.fp("bank"), "sealed": "A" * 60}],
        "inputs": [
            {
                "dataset": name,
                "sha256": next(
                    v.manifest.sha256 for v in state.datasets[name].versions if v.digest == m
                ),
            }
            for name, m in state.jobs[job].released
        ],
        "duration_ms": 100,
        **changes,
    }
    return jr.room.submit(sign_statement(enclave, jr.room.room, "job.complete", body, now=jr.clock))


def test_only_the_attested_enclave_reports_a_result_to_the_recipients(jr: JobRoom) -> None:
    job = jr.request()
    enclave, _ = jr.attempt(job)
    impostor = Party.create("enclave")
    with pytest.raises(GovernanceError, match="not a member"):
        _complete(jr, job, impostor)
    with pytest.raises(GovernanceError, match="exactly the analysis's recipients"):
        _complete(
            jr,
            job,
            enclave,
            sealed_keys=[{"recipient": jr.room.fp("merchant"), "sealed": "A" * 60}],
        )
    with pytest.raises(GovernanceError, match="other inputs"):
        _complete(jr, job, enclave, inputs=[{"dataset": "customers", "sha256": "1" * 64}])
    with pytest.raises(GovernanceError, match=r"an enclave cannot make key\.deny"):
        jr.room.submit(
            sign_statement(
                enclave, jr.room.room, "key.deny", {"job": job, "reason": "x"}, now=jr.clock
            )
        )
    _complete(jr, job, enclave)
    assert jr.state.jobs[job].status == "succeeded"
    with pytest.raises(GovernanceError, match="succeeded"):
        _complete(jr, job, enclave)


def test_a_result_is_not_released_once_consent_is_revoked(jr: JobRoom) -> None:
    job = jr.request()
    enclave, _ = jr.attempt(job)
    jr.room.revoke("bank", "transactions")
    with pytest.raises(GovernanceError, match="cannot be released"):
        _complete(jr, job, enclave)
    assert jr.state.jobs[job].status == "running"


def test_members_cannot_make_service_statements(jr: JobRoom) -> None:
    """Only the owner of one of a job's inputs may deny its keys (its key agent
    does, in owner-held release); nobody else, and no one may fail a job."""
    job = jr.request()
    for who, kind, body, reason in (
        ("analyst", "key.deny", {"job": job, "reason": "x"}, "only the owner"),
        (
            "bank",
            "job.fail",
            {"job": job, "reason": "internal error"},
            "a member cannot make job.fail",
        ),
    ):
        with pytest.raises(GovernanceError, match=reason):
            jr.room.submit(
                sign_statement(jr.room.parties[who], jr.room.room, kind, body, now=jr.clock)
            )
    assert jr.state.jobs[job].status == "requested"


def test_an_operator_forging_a_release_for_other_code_is_caught_offline(jr: JobRoom) -> None:
    """The operator holds the service key and writes the ledger itself: the fold
    re-verifies the evidence and the contract, so auditors refuse the export."""
    job = jr.request()
    document = jr.ledger.export(jr.room.room)
    enclave = Party.create("enclave")
    nonce = b64url_encode(b"\x03" * 32)
    evidence = VirtualPlatform(OTHER_CODE, now=jr.clock).attest(
        binding(nonce=nonce, tee_pubkey=enclave.fingerprint, job=job)
    )
    body = {
        "job": job,
        "enclave": enclave.identity_document(),
        "nonce": nonce,
        "evidence": evidence,
        "inputs": [{"dataset": n, "manifest": m} for n, m in jr.state.job_inputs(job)],
    }
    body["sealed_keys"] = [{**i, "sealed": "A" * 80} for i in body["inputs"]]
    # the service key signs no release at all: the operator cannot release keys
    forged = sign_statement(jr.ledger.service, jr.room.room, "key.release", body, now=jr.clock)
    with pytest.raises(GovernanceError, match=r"ledger service cannot make key\.release"):
        verify_export(
            resign(jr.room, document, [*tokens_of(document), forged]), jr.ledger.service.identity
        )
    # nor would the broker's key (were it stolen) release to other code: the fold
    # re-verifies the evidence against the contract
    broker = jr.room.broker._party
    forged = sign_statement(broker, jr.room.room, "key.release", body, now=jr.clock)
    with pytest.raises(GovernanceError, match=f"measurement {OTHER_CODE} is not approved"):
        verify_export(
            resign(jr.room, document, [*tokens_of(document), forged]), jr.ledger.service.identity
        )


def test_a_release_replaying_a_used_nonce_is_caught_offline(jr: JobRoom) -> None:
    job = jr.request()
    enclave, _ = jr.attempt(job)
    del enclave
    second = jr.request()
    document = jr.ledger.export(jr.room.room)
    release = next(
        parse_statement(t) for t in tokens_of(document) if parse_statement(t).kind == "key.release"
    )
    # the operator re-uses the first release's nonce and evidence for the second job
    replay = sign_statement(
        jr.room.broker._party,  # even the broker's own key cannot replay a release
        jr.room.room,
        "key.release",
        {**release.body.model_dump(), "job": second},
        now=jr.clock,
    )
    with pytest.raises(GovernanceError, match=r"fresh|nonce was used before"):
        verify_export(
            resign(jr.room, document, [*tokens_of(document), replay]), jr.ledger.service.identity
        )


def test_evidence_envelope_is_checked_before_any_verifier_runs() -> None:
    now = datetime.now(UTC)
    with pytest.raises(AttestationError, match="unknown evidence format"):
        verify_evidence([], now=now)
    with pytest.raises(AttestationError, match="malformed evidence"):
        verify_evidence(
            {"format": "sev-snp", "report": "!!", "vek": "", "generation": "milan"}, now=now
        )
    with pytest.raises(AttestationError, match="malformed evidence"):
        verify_evidence({"format": "insecure-virtual", "token": "x", "extra": 1}, now=now)


def test_jobs_left_running_by_a_previous_service_are_failed_at_start(jr: JobRoom) -> None:
    requested, running = jr.request(), jr.request()
    jr.attempt(running)
    runner = JobRunner(jr.ledger, jr.desk, RunnerSettings(url="http://127.0.0.1:9"))
    try:
        runner.fail_unfinished()
    finally:
        runner.close()
    for job in (requested, running):
        assert jr.state.jobs[job].status == "failed"
        assert jr.state.jobs[job].reason == "service restarted"


def test_an_enclave_that_cannot_start_its_job_fails_it_with_a_category(jr: JobRoom) -> None:
    job = jr.request()
    runner = JobRunner(jr.ledger, jr.desk, RunnerSettings(url="http://127.0.0.1:9"))
    try:
        runner._run(jr.room.room, job)  # the enclave process runs, finds no service, exits 1
    finally:
        runner.close()
    assert jr.state.jobs[job].status == "failed"
    # the enclave printed "job failed: internal error": the runner takes the category only
    assert jr.state.jobs[job].reason == "internal error"


def test_an_enclave_reads_only_its_own_inputs_and_nothing_once_its_job_ends(
    jr: JobRoom, tmp_path: Path
) -> None:
    """The service's routes, in process over the real ledger: an attested enclave
    signs with its ephemeral key; what it may read is decided on every request."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    state = jr.state
    store = LocalBlobStore(blobs)
    for name, dataset in state.datasets.items():  # the ciphertext JobRoom sealed, uploaded
        digest = dataset.versions[-1].manifest.sha256
        shutil.copy(tmp_path / name / "data.parquet", blobs / digest)
        store.claim(jr.room.room, digest, dataset.owner)  # by its owner, in this room
    job = jr.request()
    enclave, _ = jr.attempt(job)
    own = [state.version(n, m).manifest.sha256 for n, m in jr.state.jobs[job].released]
    unapproved = next(
        p.action.manifest["payload"]["ciphertext"]["sha256"]
        for p in state.proposals.values()
        if p.action.type == "register_dataset" and p.status == "open"
    )
    service = Service(jr.ledger, store, LocalBlobStore(tmp_path / "results"))
    service.trust_enclave(jr.state.jobs[job])
    room = jr.room.room

    app = create_app(service)

    def get(path: str) -> int:
        async def send() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cleanroom") as http:
                request = http.build_request("GET", path)
                sign_request(request, b"", enclave)
                answer = await http.send(request)
                if answer.status_code == 200 and "/blobs/" in path:
                    assert hashlib.sha256(answer.content).hexdigest() == path.rsplit("/", 1)[1]
                return answer.status_code

        return asyncio.run(send())

    assert get(f"/v1/rooms/{room}/export") == 200
    for digest in own:
        assert get(f"/v1/rooms/{room}/blobs/{digest}") == 200  # its content checked above
    assert get(f"/v1/rooms/{room}/blobs/{unapproved}") == 403
    assert get(f"/v1/rooms/{room}") == 403  # a member route
    assert get(f"/v1/rooms/{room}/jobs") == 403
    _complete(jr, job, enclave)
    assert get(f"/v1/rooms/{room}/export") == 403
    assert get(f"/v1/rooms/{room}/blobs/{own[0]}") == 403
