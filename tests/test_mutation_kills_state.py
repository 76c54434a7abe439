"""The governance state machine, one check at a time (mutation kills, docs/testing.md).

One room is built once on a real ledger: two data owners (one deposits its key
with the attested broker, the other keeps it at home), a contract approving
two measurements, an analysis over both datasets and one over the owner-held
dataset alone, and a job of each waiting for keys. Every row below copies that
state and applies hand-made signed statements straight to the pure state
machine (:meth:`RoomState.apply`): one row per release condition (R1-R11) and
per transition guard, each refused with the phrase of the one check that must
refuse it, and the state unchanged by the refusal.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom import Party, Schema, seal_dataset
from cleanroom.attestation import VirtualPlatform, binding
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.datasets.seal import unseal_key
from cleanroom.errors import AttestationError, GovernanceError
from cleanroom.governance import parse_statement, sign_statement
from cleanroom.governance.model import KeyRequestError
from cleanroom.governance.state import RoomState, fold
from cleanroom.governance.statements import Statement
from cleanroom.governance.views import job_view, room_view
from cleanroom.protocol.sealing import seal_release
from tests.rooms import CODE, Clock, RoomFixture, make_ledger

OTHER = "insecure-virtual:" + "ab" * 48  # a second measurement the contract approves
UNAPPROVED = "insecure-virtual:" + "cd" * 48
BOTH = "SELECT count(*) FROM transactions JOIN customers USING (id)"
SOLO = "SELECT count(*) FROM customers"
SCHEMA = Schema.from_json(
    {"identity_column": "id", "columns": [{"name": "id", "type": "string", "nullable": False}]}
)
Who = str | Party


def _nonce() -> str:
    return b64url_encode(hashlib.sha256(Party.create("n").fingerprint.encode()).digest())


class World:
    """The room, built once; :meth:`fresh` hands each row its own copy of the state."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.fx = RoomFixture(make_ledger(tmp / "ledger", self.clock), self.clock)
        self.room = self.fx.room
        self.keys: dict[str, bytes] = {}
        self.made = 0
        self.manifests: dict[str, dict[str, Any]] = {}
        self.accept(
            "analyst",
            {
                "type": "set_measurements",
                "measurements": [
                    {"platform": "insecure-virtual", "value": CODE},
                    {"platform": "insecure-virtual", "value": OTHER},
                ],
                "allow_insecure_virtual": True,
            },
            ["bank", "merchant", "analyst"],
        )
        self.publish("bank", "transactions")
        self.publish("merchant", "customers")
        self.fx.deposit(
            "bank",
            "transactions",
            self.manifests["transactions"],
            self.keys["transactions"],
            ["insecure-virtual"],
        )
        self.fx.submit(self.token("merchant", "key.deposit", self.owner_deposit("customers")))
        both = {"inputs": ["transactions", "customers"], "text": BOTH}
        self.accept("analyst", self.analysis("count", **both), ["bank", "merchant"])
        self.accept(
            "analyst", self.analysis("solo", inputs=["customers"], text=SOLO), ["bank", "merchant"]
        )
        self.job = self.request("count")
        self.solo = self.request("solo")
        self.base = self.fx.ledger.state(self.room)

    # -- building the room on the ledger ----------------------------------------------

    def accept(self, proposer: str, action: dict[str, Any], voters: list[str]) -> str:
        pid = self.fx.propose(proposer, action)
        for voter in voters:
            self.fx.vote(voter, pid)
        assert self.fx.status(pid) == "accepted", self.fx.ledger.state(self.room).proposals[pid]
        return pid

    def sealed(self, owner: str, name: str, rows: int = 2) -> dict[str, Any]:
        self.made += 1
        out = self.tmp / f"{name}-{self.made}"
        party = self.fx.parties[owner]
        table = pa.table({"id": [f"r{i}" for i in range(rows)]})
        sealed = seal_dataset(table, schema=SCHEMA, owner=party, output=out, name=name)
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        self.keys[canonical_digest(manifest)] = unseal_key(out, sealed.manifest, party)
        return manifest

    def publish(self, owner: str, name: str) -> None:
        manifest = self.sealed(owner, name)
        self.manifests[name] = manifest
        self.keys[name] = self.keys[canonical_digest(manifest)]
        self.accept(
            owner,
            {"type": "register_dataset", "manifest": manifest},
            list(dict.fromkeys([owner, "bank"])),
        )

    def owner_deposit(self, name: str, **policy: Any) -> dict[str, Any]:
        return {
            "dataset": name,
            "manifest": canonical_digest(self.manifests[name]),
            "release": "owner",
            "policy": {"platforms": ["insecure-virtual"], **policy},
        }

    def analysis(self, name: str, *, inputs: list[str], text: str) -> dict[str, Any]:
        return {
            "type": "add_analysis",
            "name": name,
            "language": "sql",
            "text": text,
            "inputs": inputs,
            "recipients": [self.fx.fp("bank")],
        }

    def request(self, analysis: str) -> str:
        text = BOTH if analysis == "count" else SOLO
        body = {"analysis": analysis, "digest": hashlib.sha256(text.encode()).hexdigest()}
        return self.fx.submit(self.token("analyst", "job.request", body))

    # -- statements straight to the state machine ----------------------------------------

    def party(self, who: Who) -> Party:
        if isinstance(who, Party):
            return who
        if who == "service":
            return self.fx.ledger.service
        if who == "broker":
            return self.fx.broker._party
        return self.fx.parties[who]

    def token(self, who: Who, kind: str, body: dict[str, Any], room: str | None = None) -> str:
        return sign_statement(self.party(who), room or self.room, kind, body, now=self.clock)

    def fresh(self) -> RoomState:
        return copy.deepcopy(self.base, {id(self.base.memo): None})

    def apply(
        self, state: RoomState, who: Who, kind: str, body: dict[str, Any], *, at: int = 0
    ) -> Statement:
        self.clock.advance(10)
        statement = parse_statement(self.token(who, kind, body))
        state.apply(statement, at or self.clock.now, jws.verify_parsed)
        return statement

    def propose(self, state: RoomState, who: Who, action: dict[str, Any]) -> str:
        return self.apply(state, who, "proposal.create", {"action": action}).digest

    def vote(self, state: RoomState, who: Who, pid: str, vote: str = "approve") -> None:
        self.apply(state, who, "ballot", {"proposal": pid, "vote": vote})

    def decide(self, state: RoomState, who: Who, action: dict[str, Any], voters: list[str]) -> str:
        pid = self.propose(state, who, action)
        for voter in voters:
            self.vote(state, voter, pid)
        return pid

    def new_version(self, state: RoomState, owner: str, name: str, rows: int = 5) -> str:
        manifest = self.sealed(owner, name, rows)
        action = {"type": "register_dataset", "manifest": manifest}
        self.decide(state, owner, action, list(dict.fromkeys([owner, "bank"])))
        return canonical_digest(manifest)

    def evidence(
        self, enclave: Party, nonce: str, job: str, measurement: str = CODE
    ) -> dict[str, Any]:
        report = binding(nonce=nonce, tee_pubkey=enclave.fingerprint, job=job)
        return VirtualPlatform(measurement, now=self.clock).attest(report)

    def release(
        self,
        state: RoomState,
        names: list[str],
        *,
        job: str = "",
        enclave: Party | None = None,
        nonce: str = "",
        measurement: str = CODE,
        **changes: Any,
    ) -> dict[str, Any]:
        """A key.release body for ``names`` (their current versions), keys sealed."""
        job = job or self.job
        enclave = enclave or Party.create("enclave")
        nonce = nonce or _nonce()
        inputs = [(n, state.datasets[n].versions[-1].digest) for n in names]
        sealed = [
            {
                "dataset": n,
                "manifest": m,
                "sealed": seal_release(
                    self.keys.get(m, b"k" * 32),
                    enclave.identity,
                    room=self.room,
                    job=job,
                    dataset=n,
                    manifest=m,
                ),
            }
            for n, m in inputs
        ]
        return {
            "job": job,
            "enclave": enclave.identity_document(),
            "nonce": nonce,
            "evidence": self.evidence(enclave, nonce, job, measurement),
            "inputs": [{"dataset": n, "manifest": m} for n, m in inputs],
            "sealed_keys": sealed,
            **changes,
        }

    def run(self, state: RoomState, job: str = "") -> tuple[Party, str]:
        """Both releases of the count job (broker, then owner): the job runs."""
        enclave, nonce = Party.create("enclave"), _nonce()
        kw: dict[str, Any] = {"job": job or self.job, "enclave": enclave, "nonce": nonce}
        self.apply(state, "broker", "key.release", self.release(state, ["transactions"], **kw))
        self.apply(state, "merchant", "key.release", self.release(state, ["customers"], **kw))
        assert state.jobs[job or self.job].status == "running"
        return enclave, nonce

    def complete(self, state: RoomState, job: str = "", **changes: Any) -> dict[str, Any]:
        found = state.jobs[job or self.job]
        return {
            "job": found.id,
            "output": {
                "sha256": "0" * 64,
                "bytes": 4096,
                "rows": 16,
                "columns": [{"name": "n", "type": "int64"}],
                "key_id": "k",
            },
            "sealed_keys": [{"recipient": self.fx.fp("bank"), "sealed": "A" * 60}],
            "inputs": [
                {"dataset": n, "sha256": state.version(n, m).manifest.sha256}
                for n, m in found.released
            ],
            "duration_ms": 100,
            **changes,
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("state"))


def _view(state: RoomState) -> tuple[Any, ...]:
    """Everything a refused statement must leave as it was."""
    jobs = {
        j.id: (j.status, j.released, dict(j.input_keys), j.waiting_for, j.enclave, j.nonce)
        for j in state.jobs.values()
    }
    return (
        state.digest(),
        room_view(state),
        state.size,
        state.last_time,
        set(state.seen),
        jobs,
        set(state.deposits),
        dict(state.brokers),
        dict(state._enclaves),
        set(state.nonces),
        {d.name: (d.consent, d.spent) for d in state.datasets.values()},
        {p.id: (p.status, set(p.approvals), set(p.rejections)) for p in state.proposals.values()},
        {m.fingerprint: (m.status, set(m.withdrawn)) for m in state.members.values()},
    )


def refused(
    world: World,
    state: RoomState,
    who: Who,
    kind: str,
    body: dict[str, Any],
    match: str,
    error: type[Exception] = GovernanceError,
    *,
    at: int = 0,
) -> None:
    before = _view(state)
    with pytest.raises(error, match=match) as caught:
        world.apply(state, who, kind, body, at=at)
    if error is GovernanceError:  # the room's refusal, not a fault of the request
        assert not isinstance(caught.value, KeyRequestError), caught.value
    assert _view(state) == before


# -- (1)-(3) every statement: room, replay, time, author -----------------------------


def test_1_a_statement_for_another_room_is_refused(world: World) -> None:
    state = world.fresh()
    body = {"analysis": "count", "digest": "0" * 64}
    statement = parse_statement(world.token("analyst", "job.request", body, "0" * 32))
    before = _view(state)
    with pytest.raises(GovernanceError, match="belongs to another room"):
        state.apply(statement, world.clock.now, jws.verify_parsed)
    assert _view(state) == before


def test_2_a_statement_recorded_once_is_refused_again(world: World) -> None:
    state = world.fresh()
    body = {"proposal": "0" * 64}
    statement = parse_statement(world.token("bank", "proposal.withdraw", body))
    before = _view(state)
    with pytest.raises(GovernanceError, match="no proposal"):
        state.apply(statement, world.clock.now, jws.verify_parsed)
    assert _view(state) == before
    recorded = next(iter(state.seen))
    replay = copy.copy(statement)
    object.__setattr__(replay, "digest", recorded)
    with pytest.raises(GovernanceError, match=r"already recorded \(replay\)"):
        state.apply(replay, world.clock.now, jws.verify_parsed)
    assert _view(state) == before


def test_3_ledger_time_may_stand_still_but_never_go_back(world: World) -> None:
    state = world.fresh()
    body = world.release(state, ["customers"], job=world.solo)
    refused(world, state, "merchant", "key.release", body, "went backwards", at=state.last_time - 1)
    world.apply(state, "merchant", "key.release", body, at=state.last_time)  # the same ms
    assert state.jobs[world.solo].status == "running"


def test_3_the_size_and_time_of_the_ledger_are_recorded(world: World) -> None:
    state = world.fresh()
    size = state.size
    statement = world.apply(state, "merchant", "key.deny", {"job": world.solo, "reason": "no"})
    assert state.size == size + 1
    assert state.last_time == world.clock.now
    assert statement.digest in state.seen


def test_3_a_stranger_signs_nothing(world: World) -> None:
    state = world.fresh()
    body = {"job": world.job, "reason": "no"}
    refused(world, state, Party.create("x"), "key.deny", body, "not a member of this room")


def test_3_a_forged_signature_is_refused(world: World) -> None:
    state = world.fresh()
    forger = Party.create("bank")
    token = sign_statement(forger, world.room, "key.deny", {"job": world.solo, "reason": "x"})
    statement = parse_statement(token)  # the forger's signature, another author claimed
    for who in ("merchant", "service", "broker"):
        fp = world.party(who).fingerprint
        fake = copy.copy(statement)
        object.__setattr__(fake, "author", fp)
        object.__setattr__(fake, "parsed", statement.parsed)
        before = _view(state)
        with pytest.raises(Exception, match="signature"):
            state.apply(fake, world.clock.now, jws.verify_parsed)
        assert _view(state) == before, who


# -- the service, the broker and the enclave: what each may sign ------------------------


def test_the_service_denies_and_fails_jobs_and_nothing_else(world: World) -> None:
    state = world.fresh()
    refused(
        world,
        state,
        "service",
        "job.request",
        {"analysis": "count", "digest": "0" * 64},
        "ledger service cannot make job.request",
    )
    world.apply(state, "service", "key.deny", {"job": world.solo, "reason": "no"})
    assert state.jobs[world.solo].status == "failed"
    assert state.jobs[world.solo].reason == "key release denied: no"
    world.apply(state, "service", "job.fail", {"job": world.job, "reason": "time limit"})
    assert state.jobs[world.job].status == "failed"
    body = {"job": world.job, "reason": "time limit"}
    refused(world, state, "service", "job.fail", body, r"\.\.\. is failed")


def test_without_a_service_key_the_service_signs_nothing(world: World) -> None:
    state = world.fresh()
    state.service = None
    body = {"job": world.solo, "reason": "time limit"}
    refused(world, state, "service", "job.fail", body, "not a member of this room")


def test_the_broker_releases_and_denies_only_what_needs_its_keys(world: World) -> None:
    state = world.fresh()
    body = {"analysis": "count", "digest": "0" * 64}
    refused(world, state, "broker", "job.request", body, "key broker cannot make job.request")
    deny = {"job": world.solo, "reason": "no"}  # the solo job reads only the owner-held key
    refused(world, state, "broker", "key.deny", deny, "can deny only jobs that need its keys")
    world.apply(state, "broker", "key.deny", {"job": world.job, "reason": "no"})
    assert state.jobs[world.job].status == "failed"


def test_the_broker_named_by_a_deposit_signs_no_member_statement(world: World) -> None:
    state = world.fresh()
    assert world.fx.broker.fingerprint in state.brokers
    body = {"proposal": "0" * 64}
    refused(world, state, "broker", "proposal.withdraw", body, "key broker cannot make")


def test_the_enclave_reports_its_own_job_once_it_runs(world: World) -> None:
    state = world.fresh()
    enclave, _ = world.run(state)
    refused(
        world,
        state,
        enclave,
        "ballot",
        {"proposal": "0" * 64, "vote": "approve"},
        "an enclave cannot make ballot",
    )
    other = {"job": world.solo, "reason": "time limit"}
    refused(world, state, enclave, "job.fail", other, "its own job only")
    done = world.complete(state, job=world.job)
    refused(world, state, enclave, "job.complete", {**done, "job": world.solo}, "own job only")
    refused(
        world,
        state,
        enclave,
        "job.complete",
        {**done, "sealed_keys": [{"recipient": world.fx.fp("merchant"), "sealed": "A" * 60}]},
        "sealed to exactly the analysis's recipients",
    )
    twice = [{"recipient": world.fx.fp("bank"), "sealed": "A" * 60}] * 2
    refused(
        world,
        state,
        enclave,
        "job.complete",
        {**done, "sealed_keys": twice},
        "sealed to exactly the analysis's recipients",
    )
    refused(
        world,
        state,
        enclave,
        "job.complete",
        {**done, "inputs": done["inputs"][::-1]},
        "other inputs than the ones released",
    )
    world.apply(state, enclave, "job.complete", done)
    job = state.jobs[world.job]
    assert (job.status, job.finished_at) == ("succeeded", world.clock.now)
    assert job.sealed_keys == {world.fx.fp("bank"): "A" * 60}
    assert job.output is not None
    assert job.output["duration_ms"] == 100
    refused(world, state, enclave, "job.complete", done, r"\.\.\. is succeeded")
    refused(
        world,
        state,
        enclave,
        "job.fail",
        {"job": world.job, "reason": "time limit"},
        r"\.\.\. is succeeded",
    )


def test_the_enclave_fails_its_running_job(world: World) -> None:
    state = world.fresh()
    enclave, _ = world.run(state)
    world.apply(state, enclave, "job.fail", {"job": world.job, "reason": "time limit"})
    job = state.jobs[world.job]
    assert (job.status, job.reason, job.finished_at) == ("failed", "time limit", world.clock.now)


def test_no_result_once_an_owner_revoked_consent(world: World) -> None:
    state = world.fresh()
    enclave, _ = world.run(state)
    world.apply(state, "merchant", "consent.revoke", {"dataset": "customers"})
    done = world.complete(state)
    refused(world, state, enclave, "job.complete", done, "revoked consent: the result cannot")


def test_a_job_that_is_not_running_reports_no_result(world: World) -> None:
    state = world.fresh()
    enclave, nonce = Party.create("enclave"), _nonce()
    body = world.release(state, ["transactions"], enclave=enclave, nonce=nonce)
    world.apply(state, "broker", "key.release", body)  # one of two: still requested
    assert state.jobs[world.job].status == "requested"
    refused(world, state, enclave, "job.complete", world.complete(state), r"\.\.\. is requested")
    world.apply(state, enclave, "job.fail", {"job": world.job, "reason": "time limit"})
    assert state.jobs[world.job].status == "failed"


# -- members: who may sign what ---------------------------------------------------------


def test_only_analysts_and_recipients_request_jobs_of_active_approved_text(world: World) -> None:
    state = world.fresh()
    good = {"analysis": "count", "digest": hashlib.sha256(BOTH.encode()).hexdigest()}
    refused(world, state, "merchant", "job.request", good, "only analysts and result recipients")
    refused(
        world,
        state,
        "analyst",
        "job.request",
        {**good, "digest": "0" * 64},
        "is not the one expected",
    )
    refused(world, state, "analyst", "job.request", {**good, "analysis": "none"}, "no analysis")
    job = world.apply(state, "bank", "job.request", good).digest  # a result recipient may
    assert state.jobs[job].waiting_for == ("key broker", world.fx.fp("merchant"))
    assert state.jobs[job].requested_at == world.clock.now
    world.apply(state, "merchant", "consent.revoke", {"dataset": "customers"})
    refused(world, state, "analyst", "job.request", good, "'customers' has revoked consent")


def test_a_retired_analysis_runs_no_new_job_and_gets_no_key(world: World) -> None:
    state = world.fresh()
    action = {"type": "retire_analysis", "name": "count"}
    world.decide(state, "analyst", action, ["bank", "merchant"])
    assert state.analyses["count"].status == "retired"
    good = {"analysis": "count", "digest": hashlib.sha256(BOTH.encode()).hexdigest()}
    refused(world, state, "analyst", "job.request", good, "'count' is retired")
    body = world.release(state, ["transactions"])
    refused(world, state, "broker", "key.release", body, "'count' is no longer approved")


def test_a_revised_analysis_is_the_next_version_and_supersedes_the_old_text(
    world: World,
) -> None:
    state = world.fresh()
    revised = "SELECT count(*) AS n FROM transactions JOIN customers USING (id)"
    action = world.analysis("count", inputs=["transactions", "customers"], text=revised)
    pid = world.decide(state, "analyst", action, ["bank", "merchant"])
    assert state.proposals[pid].status == "accepted"
    analysis = state.analyses["count"]
    assert (analysis.version, analysis.digest) == (2, hashlib.sha256(revised.encode()).hexdigest())
    assert analysis.superseded == (hashlib.sha256(BOTH.encode()).hexdigest(),)
    assert room_view(state)["analyses"][0]["version"] == 2
    # a job of the old text gets no more keys; the old text runs no new job
    body = world.release(state, ["transactions"], job=world.job)
    refused(world, state, "broker", "key.release", body, "'count' is no longer approved")
    stale = {"analysis": "count", "digest": hashlib.sha256(BOTH.encode()).hexdigest()}
    refused(world, state, "analyst", "job.request", stale, "is not the one expected")
    # the same analysis again is refused (it would change nothing); a third text is v3
    refused(
        world,
        state,
        "analyst",
        "proposal.create",
        {"action": action},
        r"^version 2 of 'count' is this analysis already$",
    )
    third = world.analysis("count", inputs=["transactions", "customers"], text=BOTH)
    world.decide(state, "analyst", third, ["bank", "merchant"])
    assert state.analyses["count"].version == 3
    assert len(state.analyses["count"].superseded) == 2


def test_a_retired_analysis_may_come_back_as_its_next_version(world: World) -> None:
    state = world.fresh()
    world.decide(
        state, "analyst", {"type": "retire_analysis", "name": "solo"}, ["merchant", "bank"]
    )
    assert state.analyses["solo"].status == "retired"
    again = world.analysis("solo", inputs=["customers"], text=SOLO)
    world.decide(state, "analyst", again, ["merchant", "bank"])
    assert (state.analyses["solo"].status, state.analyses["solo"].version) == ("active", 2)


def test_a_job_of_a_dataset_without_a_version_waits_for_nobody(world: World) -> None:
    state = world.fresh()
    state.datasets["customers"].versions.clear()  # never registered: no one can release yet
    body = {"analysis": "solo", "digest": hashlib.sha256(SOLO.encode()).hexdigest()}
    job = world.apply(state, "analyst", "job.request", body).digest
    assert state.jobs[job].waiting_for == ()
    with pytest.raises(GovernanceError, match="has no registered version"):
        state.job_inputs(job)


def test_owners_deny_only_jobs_reading_their_data(world: World) -> None:
    state = world.fresh()
    refused(
        world,
        state,
        "analyst",
        "key.deny",
        {"job": world.job, "reason": "no"},
        "only the owner of one of the job's inputs",
    )
    refused(
        world,
        state,
        "bank",
        "key.deny",
        {"job": world.solo, "reason": "no"},
        "only the owner of one of the job's inputs",
    )
    refused(world, state, "bank", "key.deny", {"job": "0" * 64, "reason": "no"}, "no job 000000")
    world.apply(state, "bank", "key.deny", {"job": world.job, "reason": "no"})
    assert state.jobs[world.job].status == "failed"


def test_a_removed_member_only_revokes_its_own_data_once(world: World) -> None:
    state = world.fresh()
    merchant = world.fx.fp("merchant")
    world.decide(state, "bank", {"type": "remove_member", "member": merchant}, ["bank", "analyst"])
    member = state.members[merchant]
    assert (member.status, member.removed_at) == ("removed", state.size - 1)
    assert not state.datasets["customers"].consent
    assert state.datasets["transactions"].consent
    assert all(d.owner != merchant for d in state.deposits.values())
    assert any(d.owner == world.fx.fp("bank") for d in state.deposits.values())
    version = state.contract_version
    refused(
        world,
        state,
        "merchant",
        "consent.revoke",
        {"dataset": "transactions"},
        "only the dataset's owner can revoke",
    )
    world.apply(state, "merchant", "consent.revoke", {"dataset": "customers"})
    assert member.withdrawn == {"customers"}
    assert state.contract_version == version  # recorded, changes nothing else
    refused(
        world,
        state,
        "merchant",
        "consent.revoke",
        {"dataset": "customers"},
        "merchant already revoked customers",
    )
    refused(
        world,
        state,
        "merchant",
        "key.deny",
        {"job": world.solo, "reason": "no"},
        r"merchant is not an active member \(removed\)",
    )


def test_a_removed_owner_whose_consent_stands_revokes_it(world: World) -> None:
    state = world.fresh()
    state.members[world.fx.fp("merchant")].status = "removed"  # removal kept the consent (never)
    version = state.contract_version
    world.apply(state, "merchant", "consent.revoke", {"dataset": "customers"})
    assert not state.datasets["customers"].consent
    assert state.contract_version == version + 1


def test_consent_is_revoked_once_by_its_owner(world: World) -> None:
    state = world.fresh()
    version = state.contract_version
    world.apply(state, "merchant", "consent.revoke", {"dataset": "customers"})
    assert state.contract_version == version + 1
    refused(
        world,
        state,
        "merchant",
        "consent.revoke",
        {"dataset": "customers"},
        "consent for customers is already revoked",
    )


def test_an_unknown_kind_after_creation_is_refused(world: World) -> None:
    state = world.fresh()
    body = {"job": world.solo, "reason": "time limit"}
    refused(
        world,
        state,
        "bank",
        "job.fail",
        body,
        "^a member cannot make job.fail statements in a created room$",
    )


# -- membership transitions in a room being formed -----------------------------------------


@pytest.fixture(scope="module")
def forming(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, RoomState, RoomFixture]:
    world = World.__new__(World)
    world.clock = Clock()
    fx = RoomFixture(
        make_ledger(tmp_path_factory.mktemp("forming"), world.clock), world.clock, accept=False
    )
    world.fx, world.room = fx, fx.room
    return world, fx.ledger.state(fx.room), fx


def test_an_invitee_accepts_its_own_invitation_once(
    forming: tuple[World, RoomState, RoomFixture],
) -> None:
    world, base, fx = forming
    state = copy.deepcopy(base, {id(base.memo): None})
    invitation = state.members[fx.fp("bank")].invitation
    refused(
        world,
        state,
        "merchant",
        "member.accept",
        {"invitation": "0" * 64},
        "acceptance names a different invitation",
    )
    refused(
        world,
        state,
        "merchant",
        "member.decline",
        {"invitation": "0" * 64},
        "the decline names a different invitation",
    )
    refused(
        world,
        state,
        "bank",
        "member.accept",
        {"invitation": invitation},
        "bank has no pending invitation",
    )
    refused(world, state, "bank", "consent.revoke", {"dataset": "x"}, "the room is not active yet")
    refused(
        world,
        state,
        "merchant",
        "consent.revoke",
        {"dataset": "x"},
        r"merchant is not an active member \(invited\)",
    )
    for name in ("merchant", "analyst"):
        world.apply(state, name, "member.accept", {"invitation": invitation})
        assert state.status == "pending"
        assert state.contract_version == 0
    refused(
        world,
        state,
        "analyst",
        "member.accept",
        {"invitation": invitation},
        "has no pending invitation",
    )
    world.apply(state, "auditor", "member.accept", {"invitation": invitation})
    assert (state.status, state.contract_version) == ("active", 1)


def test_one_decline_ends_a_room_being_formed(
    forming: tuple[World, RoomState, RoomFixture],
) -> None:
    world, base, _ = forming
    state = copy.deepcopy(base, {id(base.memo): None})
    invitation = state.members[world.fx.fp("merchant")].invitation
    world.apply(state, "merchant", "member.decline", {"invitation": invitation})
    assert state.status == "declined"
    assert state.members[world.fx.fp("merchant")].status == "declined"
    refused(
        world,
        state,
        "analyst",
        "member.accept",
        {"invitation": invitation},
        "can never become active",
    )


# -- key deposits and the broker they name ---------------------------------------------------


def test_deposits_are_the_owners_own_and_keep_their_mode(world: World) -> None:
    state = world.fresh()
    refused(
        world,
        state,
        "analyst",
        "key.deposit",
        world.owner_deposit("customers"),
        "analyst is not a data provider",
    )
    refused(
        world,
        state,
        "bank",
        "key.deposit",
        world.owner_deposit("customers"),
        "dataset 'customers' belongs to another member",
    )
    # the merchant names a dataset of its own that does not exist, with the bank's manifest
    theirs = {**world.owner_deposit("transactions"), "dataset": "shops"}
    refused(world, state, "merchant", "key.deposit", theirs, "deposited by another member")
    refused(
        world,
        state,
        "bank",
        "key.deposit",
        world.owner_deposit("transactions"),
        "deposited with the broker, which can still open it",
    )
    unknown = {**world.owner_deposit("customers"), "manifest": "0" * 64}
    refused(
        world,
        state,
        "merchant",
        "key.deposit",
        unknown,
        "the manifest is not a version of 'customers' signed by merchant",
    )
    renamed = {**world.owner_deposit("customers"), "dataset": "shops"}  # its manifest, new name
    refused(world, state, "merchant", "key.deposit", renamed, "deposited by another member")
    # the owner-held key again (a new policy): the owner's own, so allowed
    world.apply(state, "merchant", "key.deposit", world.owner_deposit("customers"))


def test_a_proposed_version_takes_a_deposit_until_it_is_rejected(world: World) -> None:
    state = world.fresh()
    manifest = world.sealed("merchant", "customers", rows=7)
    digest = canonical_digest(manifest)
    pid = world.propose(state, "merchant", {"type": "register_dataset", "manifest": manifest})
    body = {**world.owner_deposit("customers"), "manifest": digest}
    ok = copy.deepcopy(state)
    world.apply(ok, "merchant", "key.deposit", body)
    assert ok.deposits[digest].release == "owner"
    world.vote(state, "bank", pid, "reject")
    assert state.proposals[pid].status == "rejected"
    refused(world, state, "merchant", "key.deposit", body, "is not a version of 'customers'")


def _offer(
    world: World,
    nonce: str = "n" * 20,
    measurement: str = CODE,
    key: Party | None = None,
    evidence_key: Party | None = None,
) -> dict[str, Any]:
    from cleanroom.attestation.evidence import broker_binding  # noqa: PLC0415

    key = key or Party.create("key broker")
    report = broker_binding(nonce=nonce, tee_pubkey=(evidence_key or key).fingerprint)
    evidence = VirtualPlatform(measurement, now=world.clock).attest(report)
    return {"identity": key.identity_document(), "nonce": nonce, "evidence": evidence}


def _broker_deposit(world: World, offer: dict[str, Any], **policy: Any) -> dict[str, Any]:
    return {
        "dataset": "customers",
        "manifest": canonical_digest(world.manifests["customers"]),
        "sealed_key": "S" * 60,
        "broker": offer,
        "policy": {"platforms": ["insecure-virtual"], **policy},
    }


BROKERS: dict[str, tuple[Callable[[World, RoomState], dict[str, Any]], str]] = {
    "evidence of another nonce": (
        lambda w, s: {**_offer(w), "nonce": "m" * 20},
        "key broker is not attested: the evidence's report data does not bind",
    ),
    "evidence of another key": (
        lambda w, s: _offer(w, evidence_key=Party.create("other")),
        "key broker is not attested: the evidence's report data does not bind",
    ),
    "a measurement the contract does not approve": (
        lambda w, s: _offer(w, measurement=UNAPPROVED),
        "key broker is not attested: measurement",
    ),
    "a member's key": (
        lambda w, s: _offer(w, key=w.fx.parties["bank"]),
        "a key broker's key must be its own",
    ),
    "the service's key": (
        lambda w, s: _offer(w, key=w.fx.ledger.service),
        "a key broker's key must be its own",
    ),
}


@pytest.mark.parametrize("case", list(BROKERS))
def test_a_deposit_names_an_attested_broker_of_its_own(world: World, case: str) -> None:
    state = world.fresh()
    make, match = BROKERS[case]
    refused(
        world, state, "merchant", "key.deposit", _broker_deposit(world, make(world, state)), match
    )


def test_a_broker_with_an_enclaves_key_is_refused(world: World) -> None:
    state = world.fresh()
    enclave, _ = world.run(state)
    refused(
        world,
        state,
        "merchant",
        "key.deposit",
        _broker_deposit(world, _offer(world, key=enclave)),
        "a key broker's key must be its own",
    )


def test_a_broker_outside_the_deposits_own_policy_is_refused(world: World) -> None:
    state = world.fresh()
    other = _broker_deposit(world, _offer(world), measurements=[OTHER])
    refused(world, state, "merchant", "key.deposit", other, "deposit's own policy does not allow")
    sev = _broker_deposit(world, _offer(world), platforms=["sev-snp"])
    refused(world, state, "merchant", "key.deposit", sev, "deposit's own policy does not allow")
    ok = _broker_deposit(world, _offer(world, measurement=OTHER), measurements=[OTHER])
    world.apply(state, "merchant", "key.deposit", ok)
    digest = ok["manifest"]
    assert state.deposits[digest].release == "broker"
    assert state.deposits[digest].broker_claims is not None
    assert state.deposits[digest].broker.fingerprint in state.brokers


def test_check_broker_without_a_service(world: World) -> None:
    state = world.fresh()
    state.service = None
    offer = _offer(world)
    identity, claims = state.check_broker(
        offer, world.clock.now, frozenset({"insecure-virtual"}), None
    )
    assert claims.measurement == CODE
    assert identity.fingerprint == PartyFingerprint.of(offer)
    with pytest.raises(GovernanceError, match="must be its own"):
        state.check_broker(
            _offer(world, key=world.fx.parties["analyst"]),
            world.clock.now,
            frozenset({"insecure-virtual"}),
            None,
        )


class PartyFingerprint:
    @staticmethod
    def of(offer: dict[str, Any]) -> str:
        from cleanroom.identities.identity import PublicIdentity  # noqa: PLC0415

        return PublicIdentity.from_document(offer["identity"]).fingerprint


# -- the release decision, R1-R11 -----------------------------------------------------


Prepare = Callable[[World, RoomState], tuple[Who, dict[str, Any]]]


def _first(world: World, state: RoomState, **kw: Any) -> tuple[Party, str]:
    """The broker's release of the count job, the first: fixes enclave and nonce."""
    enclave, nonce = Party.create("enclave"), _nonce()
    body = world.release(state, ["transactions"], enclave=enclave, nonce=nonce, **kw)
    world.apply(state, "broker", "key.release", body)
    return enclave, nonce


def _r1(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    return "broker", w.release(s, ["transactions"], enclave=None) | {"enclave": {"x": 1}}


def _r2_member(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    return "broker", w.release(s, ["transactions"], enclave=w.fx.parties["analyst"])


def _r2_service(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    return "broker", w.release(s, ["transactions"], enclave=w.fx.ledger.service)


def _r2_broker(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    return "merchant", w.release(s, ["customers"], job=w.solo, enclave=w.fx.broker._party)


def _r2_enclave(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    enclave, _ = _first(w, s)  # the count job's enclave, again for the solo job
    return "merchant", w.release(s, ["customers"], job=w.solo, enclave=enclave)


def _r2_nonce(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    _, nonce = _first(w, s)
    return "merchant", w.release(s, ["customers"], job=w.solo, nonce=nonce)


def _r2_later_enclave(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    _, nonce = _first(w, s)
    return "merchant", w.release(s, ["customers"], nonce=nonce)


def _r2_later_nonce(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    enclave, _ = _first(w, s)
    return "merchant", w.release(s, ["customers"], enclave=enclave)


def _r3_binding(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    body = w.release(s, ["transactions"])
    other = w.release(s, ["transactions"], job=w.solo)  # evidence bound to another job
    return "broker", {**body, "evidence": other["evidence"]}


def _r3_stale(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    body = w.release(s, ["transactions"])
    w.clock.advance(11 * 60 * 1000)  # evidence older than ten minutes when recorded
    return "broker", body


def _r4(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    enclave, nonce = _first(w, s)
    return "merchant", w.release(s, ["customers"], enclave=enclave, nonce=nonce, measurement=OTHER)


def _r5(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    w.apply(s, "service", "job.fail", {"job": w.job, "reason": "time limit"})
    return "broker", w.release(s, ["transactions"])


def _r6_measurement(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    return "broker", w.release(s, ["transactions"], measurement=UNAPPROVED)


def _r6_virtual(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    s.allow_insecure_virtual = False
    return "broker", w.release(s, ["transactions"])


def _r6_nothing(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    w.decide(
        s,
        "analyst",
        {"type": "set_measurements", "measurements": []},
        ["bank", "merchant", "analyst"],
    )
    return "broker", w.release(s, ["transactions"])


def _r8(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    w.apply(s, "merchant", "consent.revoke", {"dataset": "customers"})
    return "broker", w.release(s, ["transactions"])


def _r9(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    rule = {"type": "custom", "recipients": [w.fx.fp("merchant")]}
    action = {"type": "set_analysis_rule", "dataset": "customers", "rule": rule}
    w.decide(s, "merchant", action, ["merchant", "bank"])
    return "broker", w.release(s, ["transactions"])


def _r11_version(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    w.new_version(s, "merchant", "customers")  # a new version, no deposit for it
    return "broker", w.release(s, ["transactions"])


def _r11_platform(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    w.apply(s, "merchant", "key.deposit", w.owner_deposit("customers", platforms=["sev-snp"]))
    return "broker", w.release(s, ["transactions"])


def _r11_measurement(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    w.apply(s, "merchant", "key.deposit", w.owner_deposit("customers", measurements=[OTHER]))
    return "broker", w.release(s, ["transactions"])


def _r11_broker(w: World, s: RoomState) -> tuple[Who, dict[str, Any]]:
    measurements = [{"platform": "insecure-virtual", "value": OTHER}]
    action = {
        "type": "set_measurements",
        "measurements": measurements,
        "allow_insecure_virtual": True,
    }
    w.decide(s, "analyst", action, ["bank", "merchant", "analyst"])
    return "merchant", w.release(s, ["customers"], measurement=OTHER)


RELEASES: dict[str, tuple[Prepare, str, type[Exception]]] = {
    "R1 a malformed enclave identity": (_r1, "invalid enclave identity", KeyRequestError),
    "R2 a member's key as the enclave's": (_r2_member, "must be fresh", KeyRequestError),
    "R2 the service's key as the enclave's": (_r2_service, "must be fresh", KeyRequestError),
    "R2 a broker's key as the enclave's": (_r2_broker, "must be fresh", KeyRequestError),
    "R2 another job's enclave": (_r2_enclave, "must be fresh", KeyRequestError),
    "R2 another job's nonce": (_r2_nonce, r"nonce was used before \(replay\)", KeyRequestError),
    "R2' a later release to another enclave": (
        _r2_later_enclave,
        "already go to another enclave",
        KeyRequestError,
    ),
    "R2' a later release with another nonce": (
        _r2_later_nonce,
        "already go to another enclave",
        KeyRequestError,
    ),
    "R3 evidence bound to another job": (_r3_binding, "does not bind this nonce", AttestationError),
    "R3 stale evidence": (_r3_stale, "stale or from the future", AttestationError),
    "R4 a later release with other evidence": (_r4, "must name the same evidence", KeyRequestError),
    "R5 a job that no longer waits": (_r5, "keys go to new jobs only", GovernanceError),
    "R6 a measurement the contract does not approve": (
        _r6_measurement,
        "is not approved for insecure-virtual",
        GovernanceError,
    ),
    "R6 the insecure platform the contract no longer allows": (
        _r6_virtual,
        "which this room's contract does not allow",
        GovernanceError,
    ),
    "R6 a contract approving nothing": (_r6_nothing, "approves no measurement", GovernanceError),
    "R8 an owner revoked consent": (_r8, "'customers' has revoked consent", GovernanceError),
    "R9 an input's rule no longer admits the analysis": (_r9, "does not allow", GovernanceError),
    "R11 the current version has no deposit": (
        _r11_version,
        "owner of 'customers' has deposited no key",
        GovernanceError,
    ),
    "R11 the owner's policy excludes the platform": (
        _r11_platform,
        r"releases its key to \['sev-snp'\] only",
        GovernanceError,
    ),
    "R11 the owner's policy excludes the measurement": (
        _r11_measurement,
        f"has not approved measurement insecure-virtual:{CODE} for its key",
        GovernanceError,
    ),
    "R11 the broker holding a key is no longer approved": (
        _r11_broker,
        "key broker holding the key of 'transactions' is no longer approved",
        GovernanceError,
    ),
}


@pytest.mark.parametrize("case", list(RELEASES))
def test_release_conditions(world: World, case: str) -> None:
    prepare, match, error = RELEASES[case]
    state = world.fresh()
    who, body = prepare(world, state)
    refused(world, state, who, "key.release", body, match, error)


@pytest.mark.parametrize("case", list(RELEASES))
def test_release_conditions_in_the_shared_decision(world: World, case: str) -> None:
    """check_key_request (the desk, the broker, every owner's agent) refuses alike."""
    prepare, match, error = RELEASES[case]
    state = world.fresh()
    _, body = prepare(world, state)
    request = {k: body[k] for k in ("job", "enclave", "nonce", "evidence")}
    error = KeyRequestError if case.startswith("R1 ") else error
    with pytest.raises(error, match=match):
        state.check_key_request(request, now_ms=world.clock.now)


def test_a_malformed_key_request_is_the_requests_fault(world: World) -> None:
    state = world.fresh()
    body = world.release(state, ["transactions"])
    with pytest.raises(KeyRequestError, match="malformed: no job"):
        state.check_key_request({**body, "job": "0" * 64}, now_ms=world.clock.now)
    with pytest.raises(KeyRequestError, match="malformed"):
        state.check_key_request({"job": world.job}, now_ms=world.clock.now)
    request = {k: body[k] for k in ("job", "enclave", "nonce", "evidence")}
    assert state.check_key_request(request, now_ms=world.clock.now) == state.job_inputs(world.job)


# -- _release: what a releaser names, and what a release records ----------------------------


def test_the_broker_releases_its_own_then_the_owner_its_own(world: World) -> None:
    state = world.fresh()
    enclave, nonce = Party.create("enclave"), _nonce()
    kw: dict[str, Any] = {"enclave": enclave, "nonce": nonce}
    broker = world.fx.broker.fingerprint
    merchant = world.fx.fp("merchant")
    job = state.jobs[world.job]
    inputs = state.job_inputs(world.job)
    assert state.releasable(job, broker) == [inputs[0]]
    assert state.releasable(job, merchant) == [inputs[1]]
    assert state.releasable(job, world.fx.fp("bank")) == []  # its key is with the broker
    assert state.due(job, broker) == [inputs[0]]
    assert job.waiting_for == ("key broker", merchant)
    world.apply(state, "broker", "key.release", world.release(state, ["transactions"], **kw))
    job = state.jobs[world.job]
    assert job.status == "requested"
    assert job.released == (inputs[0],)
    assert job.waiting_for == (merchant,)
    assert (job.enclave.fingerprint, job.nonce, job.expected) == (
        enclave.fingerprint,
        nonce,
        tuple(inputs),
    )
    assert (job.platform, job.measurement, job.assurance) == (
        "insecure-virtual",
        CODE,
        "insecure-virtual",
    )
    assert state.enclave_job(enclave.fingerprint) is job
    assert state.enclave_job(merchant) is None
    assert nonce in state.nonces
    assert set(job.input_keys) == {inputs[0][1]}
    assert state.due(job, broker) == []
    assert state.due(job, merchant) == [inputs[1]]
    refused(
        world,
        state,
        "broker",
        "key.release",
        world.release(state, ["transactions"], **kw),
        r"released to this job already \(replay\)",
    )
    world.apply(state, "merchant", "key.release", world.release(state, ["customers"], **kw))
    job = state.jobs[world.job]
    assert job.status == "running"
    assert job.released == tuple(inputs)
    assert job.waiting_for == ()
    assert state.due(job, merchant) == []
    assert state.releasable(job, merchant) == [inputs[1]]
    refused(
        world,
        state,
        "merchant",
        "key.release",
        world.release(state, ["customers"], **kw),
        "keys go to new jobs only",
    )


def test_the_owner_may_release_first(world: World) -> None:
    state = world.fresh()
    enclave, nonce = Party.create("enclave"), _nonce()
    kw: dict[str, Any] = {"enclave": enclave, "nonce": nonce}
    world.apply(state, "merchant", "key.release", world.release(state, ["customers"], **kw))
    job = state.jobs[world.job]
    inputs = state.job_inputs(world.job)
    assert job.released == (inputs[1],)
    assert job.waiting_for == ("key broker",)
    world.apply(state, "broker", "key.release", world.release(state, ["transactions"], **kw))
    assert state.jobs[world.job].released == tuple(inputs)  # in the job's order
    assert state.jobs[world.job].status == "running"


NAMES: dict[str, tuple[Who, Callable[[World, RoomState], dict[str, Any]], str]] = {
    "another owner's input": (
        "merchant",
        lambda w, s: w.release(s, ["transactions"]),
        "releaser's own",
    ),
    "its own and another's": (
        "broker",
        lambda w, s: w.release(s, ["transactions", "customers"]),
        "releaser's own",
    ),
    "the owner of a key deposited with the broker": (
        "bank",
        lambda w, s: w.release(s, ["transactions"]),
        "releaser's own",
    ),
    "an analyst": ("analyst", lambda w, s: w.release(s, ["transactions"]), "releaser's own"),
    "no sealed keys": (
        "merchant",
        lambda w, s: {**w.release(s, ["customers"]), "sealed_keys": None},
        "carries its keys, sealed to the enclave",
    ),
    "a sealed key for another input": (
        "merchant",
        lambda w, s: {
            **w.release(s, ["customers"]),
            "sealed_keys": w.release(s, ["transactions"])["sealed_keys"],
        },
        "one sealed key per input",
    ),
    "two sealed keys for one input": (
        "merchant",
        lambda w, s: {**(b := w.release(s, ["customers"])), "sealed_keys": b["sealed_keys"] * 2},
        "one sealed key per input",
    ),
    "no sealed key at all": (
        "merchant",
        lambda w, s: {**w.release(s, ["customers"]), "sealed_keys": []},
        "one sealed key per input",
    ),
}


@pytest.mark.parametrize("case", list(NAMES))
def test_a_release_names_exactly_the_releasers_own(world: World, case: str) -> None:
    who, make, match = NAMES[case]
    state = world.fresh()
    refused(world, state, who, "key.release", make(world, state), match)


def test_a_release_after_the_inputs_changed_is_refused(world: World) -> None:
    state = world.fresh()
    enclave, nonce = _first(world, state)
    digest = world.new_version(state, "merchant", "customers")
    world.apply(
        state, "merchant", "key.deposit", {**world.owner_deposit("customers"), "manifest": digest}
    )
    body = world.release(state, ["customers"], enclave=enclave, nonce=nonce)
    refused(world, state, "merchant", "key.release", body, "inputs changed since its first")


def test_a_second_release_of_the_same_enclave_replays_nothing(world: World) -> None:
    state = world.fresh()
    enclave, nonce = _first(world, state)
    # the same input, named by the merchant (not its own) after the broker released it
    body = world.release(state, ["transactions"], enclave=enclave, nonce=nonce)
    refused(world, state, "merchant", "key.release", body, r"released to this job already")
    job = state.jobs[world.job]
    assert job.input_keys  # the first release's key stays
    job.released = ()  # only the sealed key is recorded: still a replay
    refused(world, state, "broker", "key.release", body, r"released to this job already")


def test_due_is_empty_for_a_job_that_no_longer_waits(world: World) -> None:
    state = world.fresh()
    world.apply(state, "service", "job.fail", {"job": world.job, "reason": "time limit"})
    assert state.due(state.jobs[world.job], world.fx.broker.fingerprint) == []
    state = world.fresh()
    job = state.jobs[world.job]
    job.input_keys[state.job_inputs(world.job)[0][1]] = "sealed"  # recorded by key alone
    assert state.due(job, world.fx.broker.fingerprint) == []


def test_a_missing_deposit_waits_for_the_datasets_owner(world: World) -> None:
    state = world.fresh()
    world.new_version(state, "merchant", "customers")
    world.new_version(state, "bank", "transactions")
    body = {"analysis": "count", "digest": hashlib.sha256(BOTH.encode()).hexdigest()}
    job = world.apply(state, "analyst", "job.request", body).digest
    assert state.jobs[job].waiting_for == (world.fx.fp("bank"), world.fx.fp("merchant"))
    assert state.releasable(state.jobs[job], world.fx.fp("merchant")) == []


def test_the_broker_waits_once_for_two_inputs(world: World) -> None:
    state = world.fresh()
    manifest = state.job_inputs(world.job)[1][1]
    state.deposits[manifest] = copy.copy(state.deposits[state.job_inputs(world.job)[0][1]])
    state.deposits[manifest].owner = world.fx.fp("merchant")
    job = state.jobs[world.job]
    assert state._waiting(job, state.job_inputs(world.job)) == ("key broker",)


# -- proposals ---------------------------------------------------------------------------


def test_ballots_and_withdrawals(world: World) -> None:
    state = world.fresh()
    action = {"type": "retire_analysis", "name": "solo"}
    pid = world.propose(state, "analyst", action)
    proposal = state.proposals[pid]
    assert proposal.approvers == {world.fx.fp("bank"), world.fx.fp("merchant")}
    assert proposal.expires_at == world.clock.now + state.constitution.proposal_ttl_ms
    refused(
        world,
        state,
        "analyst",
        "ballot",
        {"proposal": pid, "vote": "approve"},
        "analyst is not an approver",
    )
    refused(
        world,
        state,
        "bank",
        "ballot",
        {"proposal": "0" * 64, "vote": "approve"},
        "no proposal 000000000000",
    )
    world.vote(state, "bank", pid)
    refused(
        world, state, "bank", "ballot", {"proposal": pid, "vote": "reject"}, "bank already voted"
    )
    refused(
        world,
        state,
        "bank",
        "proposal.withdraw",
        {"proposal": pid},
        "only the proposer can withdraw",
    )
    world.apply(state, "analyst", "proposal.withdraw", {"proposal": pid})
    assert state.proposals[pid].status == "withdrawn"
    refused(
        world,
        state,
        "merchant",
        "ballot",
        {"proposal": pid, "vote": "approve"},
        "is withdrawn, not open",
    )


def test_a_rejecting_vote_decides_and_counts_as_a_rejection(world: World) -> None:
    state = world.fresh()
    pid = world.propose(state, "analyst", {"type": "retire_analysis", "name": "solo"})
    world.vote(state, "merchant", pid, "reject")
    proposal = state.proposals[pid]
    assert proposal.rejections == {world.fx.fp("merchant")}
    assert proposal.approvals == set()
    assert proposal.status == "rejected"
    assert state.analyses["solo"].status == "active"


def test_a_proposal_expires_at_its_deadline_not_before(world: World) -> None:
    state = world.fresh()
    pid = world.propose(state, "analyst", {"type": "retire_analysis", "name": "solo"})
    deadline = state.proposals[pid].expires_at
    body = {"job": world.solo, "reason": "no"}
    statement = parse_statement(world.token("merchant", "key.deny", body))
    state.apply(statement, deadline - 1, jws.verify_parsed)
    assert state.proposals[pid].status == "open"
    statement = parse_statement(world.token("bank", "consent.revoke", {"dataset": "transactions"}))
    state.apply(statement, deadline, jws.verify_parsed)
    assert state.proposals[pid].status == "expired"
    assert state._deadlines == [] or state._deadlines[0][0] > deadline


def test_an_accepted_proposal_that_no_longer_applies_is_rejected(world: World) -> None:
    state = world.fresh()
    pid = world.propose(state, "analyst", {"type": "retire_analysis", "name": "solo"})
    other = world.propose(state, "analyst", {"type": "retire_analysis", "name": "solo"})
    version = state.contract_version
    world.vote(state, "bank", pid)
    assert state.contract_version == version
    world.vote(state, "merchant", pid)
    assert state.proposals[pid].status == "accepted"
    assert state.contract_version == version + 1  # each accepted proposal, once
    version = state.contract_version
    world.vote(state, "bank", other)
    world.vote(state, "merchant", other)
    assert state.proposals[other].status == "rejected"
    assert state.proposals[other].note == "no longer applicable: analysis 'solo' is already retired"
    assert state.contract_version == version


def test_an_observer_proposes_nothing(world: World) -> None:
    state = world.fresh()
    refused(
        world,
        state,
        "auditor",
        "proposal.create",
        {"action": {"type": "retire_analysis", "name": "solo"}},
        "auditor is an observer and cannot propose",
    )


def test_a_removed_members_votes_and_data(world: World) -> None:
    state = world.fresh()
    assert state.voters() == {world.fx.fp(n) for n in ("bank", "merchant", "analyst")}
    assert state.voters(excluding=world.fx.fp("bank")) == {
        world.fx.fp("merchant"),
        world.fx.fp("analyst"),
    }
    assert state.result_recipients() == {world.fx.fp("bank")}


# -- the fold -----------------------------------------------------------------------------


def test_the_fold_of_the_ledger_is_the_ledgers_state(world: World) -> None:
    entries = world.fx.ledger.entries(world.room)
    records = [(e.time, parse_statement(e.statement)) for e in entries]
    state = fold(records, jws.verify_parsed, world.fx.ledger.service.identity)
    assert state.digest() == world.base.digest()
    with pytest.raises(GovernanceError, match="an empty ledger has no room"):
        fold([], jws.verify_parsed)
    with pytest.raises(GovernanceError, match=r"first statement must be room\.create"):
        fold(records[1:], jws.verify_parsed)


# -- a property: a refused statement changes nothing --------------------------------------

KINDS = ["key.release", "key.deny", "job.fail", "consent.revoke", "ballot", "proposal.withdraw"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    who=st.sampled_from(["bank", "merchant", "analyst", "auditor", "service", "broker"]),
    kind=st.sampled_from(KINDS),
    job=st.sampled_from(["job", "solo", "none"]),
    dataset=st.sampled_from(["transactions", "customers", "none"]),
    late=st.booleans(),
)
def test_a_refused_statement_changes_nothing(
    world: World, who: str, kind: str, job: str, dataset: str, late: bool
) -> None:
    state = world.fresh()
    if late:
        world.run(state)
    job_id = {"job": world.job, "solo": world.solo}.get(job, "0" * 64)
    bodies: dict[str, dict[str, Any]] = {
        "key.release": (
            world.release(state, [dataset], job=job_id)
            if dataset != "none"
            else world.release(state, ["customers"], job=job_id) | {"nonce": "x" * 43}
        ),
        "key.deny": {"job": job_id, "reason": "no"},
        "job.fail": {"job": job_id, "reason": "time limit"},
        "consent.revoke": {"dataset": dataset},
        "ballot": {"proposal": "0" * 64, "vote": "approve"},
        "proposal.withdraw": {"proposal": "0" * 64},
    }
    before = _view(state)
    try:
        world.apply(state, who, kind, bodies[kind])
    except (GovernanceError, AttestationError):
        assert _view(state) == before


# -- R10 privacy budgets (last: the only rows that need a DP analysis) ------------------

DP_SQL = "SELECT t.id AS person FROM transactions t JOIN customers c ON t.id = c.id"
DP_SPEC = {"epsilon": 1.0, "unit": "person", "aggregates": [{"name": "n", "function": "count"}]}


def _dp(world: World, budgets: dict[str, float]) -> tuple[RoomState, str]:
    """A copy of the room with these budgets and a DP analysis over both datasets."""
    state = world.fresh()
    owners = {"transactions": "bank", "customers": "merchant"}
    for name, epsilon in budgets.items():
        action = {"type": "set_privacy_budget", "dataset": name, "epsilon": epsilon}
        world.decide(state, owners[name], action, list(dict.fromkeys([owners[name], "bank"])))
    text = {"inputs": ["transactions", "customers"], "text": DP_SQL}
    action = world.analysis("dp", **text) | {"dp": DP_SPEC}
    world.decide(state, "analyst", action, ["bank", "merchant"])
    assert state.analyses["dp"].dp is not None
    body = {"analysis": "dp", "digest": hashlib.sha256(DP_SQL.encode()).hexdigest()}
    return state, world.apply(state, "analyst", "job.request", body).digest


def test_r10_a_release_charges_what_it_releases_once_per_job(world: World) -> None:
    state, job = _dp(world, {"transactions": 1.0, "customers": 1.5})
    summary = {d["name"]: d["budget"] for d in room_view(state)["datasets"]}
    assert summary["transactions"] == {"epsilon": 1.0, "delta": 0.0, "spent": 0.0, "remaining": 1.0}
    enclave, nonce = Party.create("enclave"), _nonce()
    kw: dict[str, Any] = {"job": job, "enclave": enclave, "nonce": nonce}
    world.apply(state, "broker", "key.release", world.release(state, ["transactions"], **kw))
    assert (state.datasets["transactions"].spent, state.datasets["customers"].spent) == (1.0, 0.0)
    assert state.datasets["transactions"].remaining == 0.0
    # the rest of the same job: the transactions budget, spent by this job, is not asked again
    world.apply(state, "merchant", "key.release", world.release(state, ["customers"], **kw))
    assert state.jobs[job].status == "running"
    assert state.datasets["customers"].spent == 1.0
    body = {"analysis": "dp", "digest": hashlib.sha256(DP_SQL.encode()).hexdigest()}
    second = world.apply(state, "analyst", "job.request", body).digest
    refused(
        world,
        state,
        "merchant",
        "key.release",
        world.release(state, ["customers"], job=second),
        "budget of 'transactions' is exhausted: 0 epsilon left, the analysis needs 1",
    )


def test_r10_a_budget_of_exactly_epsilon_is_enough(world: World) -> None:
    state, job = _dp(world, {"transactions": 1.0, "customers": 0.5})
    refused(
        world,
        state,
        "broker",
        "key.release",
        world.release(state, ["transactions"], job=job),
        "budget of 'customers' is exhausted: 0.5 epsilon left",
    )
    state.datasets["customers"].budget = (1.0, 0.0)
    world.apply(state, "broker", "key.release", world.release(state, ["transactions"], job=job))
    assert state.datasets["transactions"].spent == 1.0


def test_r9_a_budget_admits_only_dp_analyses(world: World) -> None:
    state = world.fresh()
    action = {"type": "set_privacy_budget", "dataset": "customers", "epsilon": 2}
    world.decide(state, "merchant", action, ["merchant", "bank"])
    refused(
        world,
        state,
        "broker",
        "key.release",
        world.release(state, ["transactions"]),
        "'customers' has a privacy budget: only differentially private",
    )
    dp = world.analysis("dp", inputs=["transactions"], text=DP_SQL) | {"dp": DP_SPEC}
    refused(
        world,
        state,
        "analyst",
        "proposal.create",
        {"action": dp},
        "'transactions' has no privacy budget for a DP analysis",
    )


def test_the_size_counts_every_entry_and_a_waiting_job_has_not_finished(world: World) -> None:
    state = world.fresh()
    assert state.size == len(world.fx.ledger.entries(world.room))
    view = job_view(state.jobs[world.job], {})
    assert (view["finished_at"], view["enclave"], view["status"]) == (0, None, "requested")
    enclave, _ = world.run(state)
    assert job_view(state.jobs[world.job], {})["enclave"] == enclave.fingerprint


def test_the_earliest_deadline_expires_first(world: World) -> None:
    state = world.fresh()
    first = world.propose(state, "analyst", {"type": "retire_analysis", "name": "solo"})
    world.clock.advance(1000)
    second = world.propose(state, "analyst", {"type": "retire_analysis", "name": "count"})
    deadline = state.proposals[first].expires_at
    assert state.proposals[second].expires_at == deadline + 1010
    body = {"job": world.solo, "reason": "no"}
    state.apply(
        parse_statement(world.token("merchant", "key.deny", body)), deadline, jws.verify_parsed
    )
    assert (state.proposals[first].status, state.proposals[second].status) == ("expired", "open")


# -- genesis: the room.create statement -----------------------------------------------------


def _create(members: list[tuple[dict[str, Any], list[str]]], creator: Party) -> Statement:
    from cleanroom.governance import new_room_id, room_create  # noqa: PLC0415

    return parse_statement(room_create(creator, new_room_id(), name="r", members=members))


GENESIS: dict[str, tuple[Callable[[Party, Party], list[Any]], str]] = {
    "an invalid member identity": (
        lambda a, b: [(a.identity_document(), ["analyst"]), ({"x": 1}, ["observer"])],
        "invalid member identity",
    ),
    "a role listed twice": (
        lambda a, b: [
            (a.identity_document(), ["analyst"]),
            (b.identity_document(), ["analyst"] * 2),
        ],
        "member b has a role listed twice",
    ),
    "a member listed twice": (
        lambda a, b: [(a.identity_document(), ["analyst"]), (a.identity_document(), ["observer"])],
        "member a is listed twice",
    ),
    "a creator who is not a member": (
        lambda a, b: [(b.identity_document(), ["analyst"])],
        "the room's creator must be one of its members",
    ),
}


@pytest.mark.parametrize("case", list(GENESIS))
def test_genesis_refuses(case: str) -> None:
    make, match = GENESIS[case]
    a, b = Party.create("a"), Party.create("b")
    with pytest.raises(GovernanceError, match=match):
        RoomState.genesis(_create(make(a, b), a), 1, jws.verify_parsed)


def test_genesis_of_one_active_creator_is_an_active_room() -> None:
    a, b = Party.create("a"), Party.create("b")
    state = RoomState.genesis(
        _create([(a.identity_document(), ["analyst"])], a), 5, jws.verify_parsed
    )
    assert (state.status, state.contract_version, state.size, state.last_time) == (
        "active",
        1,
        1,
        5,
    )
    members = [(a.identity_document(), ["analyst"]), (b.identity_document(), ["observer"])]
    state = RoomState.genesis(_create(members, a), 5, jws.verify_parsed)
    assert (state.status, state.contract_version) == ("pending", 0)
    assert state.members[b.fingerprint].status == "invited"


# -- add_member and remove_member: each guard in its own words ----------------------------


def _add(world: World, who: Party, roles: list[str] | None = None) -> dict[str, Any]:
    doc = who.identity_document()
    return {"action": {"type": "add_member", "identity": doc, "roles": roles or ["analyst"]}}


def test_a_key_the_room_already_gives_a_role_cannot_join_as_a_member(world: World) -> None:
    state = world.fresh()
    words = r"^that key is an enclave's, a key broker's or the service's$"
    for other in (world.fx.ledger.service, world.fx.broker._party):
        refused(world, state, "bank", "proposal.create", _add(world, other), words)
    enclave, _ = world.run(state)
    refused(world, state, "bank", "proposal.create", _add(world, enclave), words)
    pid = world.propose(state, "bank", _add(world, Party.create("newcomer"))["action"])
    assert state.proposals[pid].status == "open"


def test_a_member_cannot_be_added_twice_nor_a_decliner_again(world: World) -> None:
    state = world.fresh()
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        _add(world, world.fx.parties["merchant"]),
        r"^merchant is already a member$",
    )
    newcomer = Party.create("newcomer")
    pid = world.decide(
        state, "bank", _add(world, newcomer)["action"], ["bank", "merchant", "analyst"]
    )
    assert state.members[newcomer.fingerprint].status == "invited"
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        _add(world, newcomer),
        r"^newcomer is already a member$",
    )
    world.apply(state, newcomer, "member.decline", {"invitation": pid})
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        _add(world, newcomer),
        r"^newcomer declined to join this room$",
    )


def test_a_removed_member_may_be_invited_again_and_removal_is_one_contract_version(
    world: World,
) -> None:
    state = world.fresh()
    merchant = world.fx.fp("merchant")
    version = state.contract_version
    world.decide(state, "bank", {"type": "remove_member", "member": merchant}, ["bank", "analyst"])
    assert state.members[merchant].status == "removed"
    assert state.contract_version == version + 1 + 1  # the removal, and the accepted proposal
    pid = world.propose(state, "bank", _add(world, world.fx.parties["merchant"])["action"])
    assert state.proposals[pid].status == "open"


def test_a_proposal_no_active_member_can_decide_is_refused(world: World) -> None:
    state = world.fresh()
    bank, merchant = world.fx.fp("bank"), world.fx.fp("merchant")
    world.decide(state, "bank", {"type": "remove_member", "member": merchant}, ["bank", "analyst"])
    world.decide(state, "analyst", {"type": "remove_member", "member": bank}, ["analyst"])
    assert {state.members[f].status for f in (bank, merchant)} == {"removed"}
    # solo reads the merchant's data for the bank: both gone, no one may decide its retirement
    action = {"action": {"type": "retire_analysis", "name": "solo"}}
    refused(
        world, state, "analyst", "proposal.create", action, r"^no member can approve this proposal$"
    )


# -- datasets: registration, rules, consent, the policy check over the latest version ------

WIDE = Schema.from_json(
    {
        "identity_column": "id",
        "columns": [
            {"name": "id", "type": "string", "nullable": False},
            {"name": "amount", "type": "int64", "nullable": False},
        ],
    }
)
AMOUNT_RULE = {
    "type": "aggregation",
    "aggregates": [{"function": "sum", "columns": ["amount"]}],
    "min_distinct": 2,
}


def _sealed_as(world: World, owner: str, name: str, schema: Schema) -> dict[str, Any]:
    world.made += 1
    out = world.tmp / f"{name}-wide-{world.made}"
    table = pa.table(
        {c.name: [f"r{i}" if c.name == "id" else i for i in range(3)] for c in schema.columns}
    )
    seal_dataset(table, schema=schema, owner=world.fx.parties[owner], output=out, name=name)
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def _register(manifest: dict[str, Any], rule: dict[str, Any] | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"type": "register_dataset", "manifest": manifest}
    if rule is not None:
        action["rule"] = rule
    return {"action": action}


def test_each_registration_guard_refuses_in_its_own_words(world: World) -> None:
    state = world.fresh()
    upper = world.sealed("bank", "Customers")
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        _register(upper),
        r"^dataset 'Customers' differs from 'customers' only by case; SQL could not tell",
    )
    theirs = world.sealed("bank", "customers")  # the bank's manifest, the merchant's name
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        _register(theirs),
        r"^dataset 'customers' belongs to another member$",
    )
    again = world.manifests["transactions"]
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        _register(again),
        r"^this version of 'transactions' is already registered$",
    )


def test_versions_are_numbered_and_a_rule_given_with_one_is_kept_by_the_next(
    world: World,
) -> None:
    state = world.fresh()
    wide = _sealed_as(world, "bank", "transactions", WIDE)
    world.decide(state, "bank", _register(wide, AMOUNT_RULE)["action"], ["bank"])
    dataset = state.datasets["transactions"]
    assert [v.version for v in dataset.versions] == [1, 2]
    assert dataset.rule is not None
    assert dataset.rule.type == "aggregation"
    later = _sealed_as(world, "bank", "transactions", WIDE)
    world.decide(state, "bank", _register(later)["action"], ["bank"])
    assert [v.version for v in state.datasets["transactions"].versions] == [1, 2, 3]
    assert state.datasets["transactions"].rule is not None  # no rule given: the rule stays


def test_a_rule_and_an_analysis_are_checked_against_the_latest_version(world: World) -> None:
    state = world.fresh()
    wide = _sealed_as(world, "bank", "transactions", WIDE)
    world.decide(state, "bank", _register(wide)["action"], ["bank"])
    # amount exists in version 2 only: a rule on it stands, an analysis may sum it
    pid = world.propose(
        state, "bank", {"type": "set_analysis_rule", "dataset": "transactions", "rule": AMOUNT_RULE}
    )
    assert state.proposals[pid].status == "open"
    total = world.analysis(
        "total", inputs=["transactions"], text="SELECT sum(amount) AS s FROM transactions"
    )
    assert state.proposals[world.propose(state, "analyst", total)].status == "open"
    narrow = world.sealed("bank", "transactions")  # version 3 drops the column again
    world.decide(state, "bank", _register(narrow)["action"], ["bank"])
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        {"action": {"type": "set_analysis_rule", "dataset": "transactions", "rule": AMOUNT_RULE}},
        "amount",
    )
    text = "SELECT sum(amount) FROM transactions"
    action = world.analysis("total", inputs=["transactions"], text=text)
    refused(world, state, "analyst", "proposal.create", {"action": action}, "amount")


def test_an_analysis_of_a_dataset_with_no_version_is_refused(world: World) -> None:
    state = world.fresh()
    state.datasets["customers"].versions.clear()
    action = world.analysis("again", inputs=["customers"], text=SOLO)
    refused(
        world,
        state,
        "analyst",
        "proposal.create",
        {"action": action},
        r"^dataset 'customers' has no registered version$",
    )


def test_consent_is_restored_only_where_it_was_revoked(world: World) -> None:
    state = world.fresh()
    action = {"action": {"type": "restore_consent", "dataset": "customers"}}
    refused(
        world,
        state,
        "merchant",
        "proposal.create",
        action,
        r"^consent for 'customers' is not revoked$",
    )
    world.apply(state, "merchant", "consent.revoke", {"dataset": "customers"})
    pid = world.propose(state, "merchant", action["action"])
    assert state.proposals[pid].status == "open"


def test_the_memo_keeps_each_checks_outcome_apart(world: World, tmp_path: Path) -> None:
    from cleanroom.errors import PolicyError  # noqa: PLC0415
    from cleanroom.policy.memo import CheckMemo  # noqa: PLC0415

    state = world.fresh()
    state.memo = CheckMemo(tmp_path / "checks.sqlite3", namespace="test")
    inputs, recipients = ("customers",), (world.fx.fp("bank"),)
    assert state.check_policy(SOLO, inputs, recipients, None, None)
    bad = "SELECT count(*) FROM nowhere"
    with pytest.raises(PolicyError, match="nowhere"):  # refused, not the memo's earlier ok
        state.check_policy(bad, inputs, recipients, None, None)
    with pytest.raises(PolicyError, match="nowhere"):  # and refused again from the memo
        state.check_policy(bad, inputs, recipients, None, None)


def test_an_analysis_names_active_members_in_their_roles(world: World) -> None:
    state = world.fresh()
    action = world.analysis("by-bank", inputs=["customers"], text=SOLO)
    refused(
        world,
        state,
        "bank",
        "proposal.create",
        {"action": action},
        r"^bank does not have the analyst role$",
    )
    stranger = Party.create("stranger").fingerprint
    action = {**action, "recipients": [stranger]}
    refused(
        world,
        state,
        "analyst",
        "proposal.create",
        {"action": action},
        rf"^{stranger[:12]}\.\.\. is not an active member$",
    )
    action = {**action, "recipients": [world.fx.fp("merchant")]}
    refused(
        world,
        state,
        "analyst",
        "proposal.create",
        {"action": action},
        r"^merchant does not have the result_recipient role$",
    )


def test_a_version_the_dataset_does_not_have_is_refused(world: World) -> None:
    state = world.fresh()
    digest = canonical_digest(world.manifests["transactions"])
    assert state.version("transactions", digest).version == 1
    with pytest.raises(
        GovernanceError, match=r"^dataset 'transactions' has no version 000000000000"
    ):
        state.version("transactions", "0" * 64)
