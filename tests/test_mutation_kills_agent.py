"""A data owner's key agent, one check at a time, as attacks (mutation kills,
docs/testing.md).

A real ledger and the service's real app in process: the agent follows the
room through the SDK over an in-process transport run by the "operator",
who may replace any answer (the key requests it lists, the ledger export it
serves) or keep a statement off the ledger. Two data owners keep their keys
at home; an analysis reads both datasets, another the other owner's alone.
Enclaves attest with the virtual platform. The room runs on the wall clock,
since the agent signs its statements with it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from cleanroom import Party, Schema, seal_dataset
from cleanroom.agent import RELEASED_FILE, Answer, KeyAgent
from cleanroom.client import Client, Room
from cleanroom.client.vault import VAULT_DIR, KeyVault
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.datasets.seal import unseal_key
from cleanroom.errors import (
    IntegrityError,
    OperationalError,
    RollbackError,
    StorageError,
)
from cleanroom.governance import parse_statement, sign_statement
from cleanroom.governance.statements import Statement
from cleanroom.protocol.sealing import open_released
from cleanroom.service.app import Service, create_app
from cleanroom.service.blobs import LocalBlobStore
from tests.rooms import CODE, Attempt, Clock, RoomFixture, make_ledger

OTHER = "insecure-virtual:" + "ab" * 48  # a measurement the room never approved
BOTH = "SELECT count(*) FROM transactions JOIN customers USING (id)"
SOLO = "SELECT count(*) FROM customers"
SCHEMA = Schema.from_json(
    {"identity_column": "id", "columns": [{"name": "id", "type": "string", "nullable": False}]}
)
URL = "http://cleanroom"
MINUTE_MS = 60_000


class WallClock(Clock):
    """The wall clock in milliseconds, moved by :meth:`advance` (an offset)."""

    def __init__(self) -> None:
        super().__init__(0)

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.now


def _shifted(clock: Clock, ms: int) -> WallClock:
    """A wall clock ``ms`` milliseconds ahead of ``clock`` (behind, if negative)."""
    shifted = WallClock()
    shifted.advance(clock.now + ms)
    return shifted


class Operator(httpx.BaseTransport):
    """The service's app in process, as its operator serves it: ``answers`` replaces
    the answer of every GET whose path ends with a key; a POST of statements of a
    kind in ``withhold`` is kept off the ledger (``kept``) and answered 503."""

    def __init__(self, service: Service) -> None:
        self.app = create_app(service)
        self.answers: dict[str, Any] = {}
        self.withhold: set[str] = set()
        self.kept: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET":
            for suffix, answer in self.answers.items():
                if path.endswith(suffix):
                    return httpx.Response(200, json=answer)
        if request.method == "POST" and path.endswith("/statements"):
            tokens = json.loads(request.read())["statements"]
            if {parse_statement(t).kind for t in tokens} & self.withhold:
                self.kept.extend(tokens)
                return httpx.Response(503, json={"detail": "the service is busy"})
        return asyncio.run(self._forward(request))

    async def _forward(self, request: httpx.Request) -> httpx.Response:
        answer = await httpx.ASGITransport(app=self.app).handle_async_request(request)
        content = await answer.aread()
        return httpx.Response(answer.status_code, headers=answer.headers, content=content)


class OwnerRoom:
    """The room on a real ledger, the service's app over it, and the operator."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = WallClock()
        self.fx = RoomFixture(make_ledger(tmp / "ledger", self.clock), self.clock)
        self.ledger = self.fx.ledger
        self.id = self.fx.room
        self.keys: dict[str, bytes] = {}
        self.manifests: dict[str, str] = {}
        self.accept(
            "analyst",
            {
                "type": "set_measurements",
                "measurements": [{"platform": "insecure-virtual", "value": CODE}],
                "allow_insecure_virtual": True,
            },
            ("bank", "merchant", "analyst"),
        )
        self.publish("bank", "transactions")
        self.publish("merchant", "customers")
        self.accept("analyst", self.analysis("count", ["transactions", "customers"], BOTH))
        self.accept("analyst", self.analysis("solo", ["customers"], SOLO))
        self.service = Service(
            self.ledger, LocalBlobStore(tmp / "blobs"), LocalBlobStore(tmp / "results")
        )
        self.operator = Operator(self.service)

    # -- the room ------------------------------------------------------------------------

    def accept(
        self, proposer: str, action: dict[str, Any], voters: tuple[str, ...] = ("bank", "merchant")
    ) -> None:
        pid = self.fx.propose(proposer, action)
        for voter in voters:
            self.fx.vote(voter, pid)
        assert self.fx.status(pid) == "accepted"

    def publish(self, owner: str, name: str) -> None:
        out = self.tmp / name
        party = self.fx.parties[owner]
        table = pa.table({"id": ["r0", "r1"]})
        sealed = seal_dataset(table, schema=SCHEMA, owner=party, output=out, name=name)
        manifest = json.loads((out / "manifest.json").read_text())
        self.accept(
            owner,
            {"type": "register_dataset", "manifest": manifest},
            tuple(dict.fromkeys([owner, "bank"])),
        )
        self.keys[name] = unseal_key(out, sealed.manifest, party)
        self.manifests[name] = canonical_digest(manifest)
        body = {  # owner-held: the key stays with its owner's agent
            "dataset": name,
            "manifest": self.manifests[name],
            "release": "owner",
            "policy": {"platforms": ["insecure-virtual"]},
        }
        self.fx.submit(sign_statement(party, self.id, "key.deposit", body, now=self.clock))

    def analysis(self, name: str, inputs: list[str], text: str) -> dict[str, Any]:
        return {
            "type": "add_analysis",
            "name": name,
            "language": "sql",
            "text": text,
            "inputs": inputs,
            "recipients": [self.fx.fp("bank")],
        }

    def job(self, analysis: str = "count") -> str:
        text = BOTH if analysis == "count" else SOLO
        body = {"analysis": analysis, "digest": hashlib.sha256(text.encode()).hexdigest()}
        analyst = self.fx.parties["analyst"]
        return self.fx.submit(sign_statement(analyst, self.id, "job.request", body, now=self.clock))

    def ask(self, job: str) -> tuple[Attempt, dict[str, Any]]:
        """The job's enclave asks the service's key desk for keys, as it does at launch:
        its request is then listed for the owners' agents."""
        attempt = Attempt(self.service.desk, self.id, job, self.clock)
        request = self.request(attempt)
        assert attempt.release(request["evidence"])["status"] == "requested"
        return attempt, request

    @staticmethod
    def request(attempt: Attempt, **changes: Any) -> dict[str, Any]:
        return {
            "job": attempt.job,
            "enclave": attempt.enclave.identity_document(),
            "nonce": attempt.nonce,
            "evidence": attempt.evidence(),
            **changes,
        }

    @property
    def state(self) -> Any:
        return self.ledger.state(self.id)

    def statements(self) -> list[Statement]:
        return [parse_statement(e.statement) for e in self.ledger.entries(self.id)]

    def fail(self, job: str) -> None:
        body = {"job": job, "reason": "key release timed out"}
        self.fx.submit(
            sign_statement(self.ledger.service, self.id, "job.fail", body, now=self.clock)
        )

    # -- the owners' side ----------------------------------------------------------------

    def room(self, owner: str) -> Room:
        client = Client(URL, self.fx.parties[owner], transport=self.operator)
        return client.room(self.id)

    def vault(self, owner: str) -> KeyVault:
        party = self.fx.parties[owner]
        vault = KeyVault(party, self.tmp / owner / VAULT_DIR)
        for name, manifest in self.manifests.items():
            if self.state.datasets[name].owner == party.fingerprint:
                vault.keep(self.id, name, manifest, self.keys[name])
        return vault

    def agent(self, owner: str = "bank", **options: Any) -> KeyAgent:
        return KeyAgent(self.room(owner), self.vault(owner), **options)


@pytest.fixture
def world(tmp_path: Path) -> OwnerRoom:
    return OwnerRoom(tmp_path)


def _fp(world: OwnerRoom, who: str) -> str:
    return world.fx.fp(who)


# -- a release ---------------------------------------------------------------------------


def test_an_owner_releases_its_own_input_to_the_enclave_its_request_binds(
    world: OwnerRoom,
) -> None:
    job = world.job()
    attempt, request = world.ask(job)
    agent = world.agent()  # the default clock: the wall clock
    assert agent.requests() == [request]  # the service's list, as it came
    assert agent.step() == [Answer(job, "released", "transactions")]
    release = world.statements()[-1]
    assert (release.kind, release.author) == ("key.release", _fp(world, "bank"))
    assert [(i.dataset, i.manifest) for i in release.body.inputs] == [
        ("transactions", world.manifests["transactions"])
    ]
    (sealed,) = release.body.sealed_keys
    key = open_released(
        attempt.enclave,
        sealed.sealed,
        room=world.id,
        job=job,
        dataset="transactions",
        manifest=world.manifests["transactions"],
    )
    assert key == world.keys["transactions"]
    found = world.state.jobs[job]
    assert (found.status, found.waiting_for) == ("requested", (_fp(world, "merchant"),))
    assert json.loads((agent.vault.directory / RELEASED_FILE).read_text())["rooms"][world.id]
    # the request is still listed (the merchant has not released): never answered twice
    count = len(world.statements())
    assert agent.requests() == [request]
    assert agent.step() == []
    assert len(world.statements()) == count
    # the other owner's agent releases its own input: the job runs
    assert world.agent("merchant").step() == [Answer(job, "released", "customers")]
    assert world.state.jobs[job].status == "running"
    assert agent.requests() == []


def test_a_restarted_agent_does_not_release_a_job_twice(world: OwnerRoom) -> None:
    job = world.job()
    _, request = world.ask(job)
    assert [a.action for a in world.agent().step()] == ["released"]
    count = len(world.statements())
    again = world.agent()  # the same owner, the same vault: a fresh agent
    assert again.requests() == [request]
    assert again.step() == []  # its input is released: nothing is due from it
    assert len(world.statements()) == count


def test_a_job_that_reads_none_of_the_owners_datasets_gets_nothing_from_it(
    world: OwnerRoom,
) -> None:
    job = world.job("solo")
    world.ask(job)
    count = len(world.statements())
    assert world.agent("bank").step() == []
    assert len(world.statements()) == count
    assert world.agent("merchant").step() == [Answer(job, "released", "customers")]
    assert world.state.jobs[job].status == "running"


def test_a_key_requests_answer_that_is_not_a_list_is_no_request(world: OwnerRoom) -> None:
    job = world.job()
    _, request = world.ask(job)
    agent = world.agent()
    world.operator.answers["/key-requests"] = {"requests": [request]}
    count = len(world.statements())
    assert agent.requests() == []
    assert agent.step() == []
    assert len(world.statements()) == count
    world.operator.answers["/key-requests"] = [42, "junk", None, request]  # only one request
    assert agent.step() == [Answer(job, "released", "transactions")]


# -- a request that does not verify is ignored, not denied -------------------------------


def _tampered(attempt: Attempt) -> dict[str, Any]:
    evidence = attempt.evidence()
    return {**evidence, "token": evidence["token"][:-4] + "AAAA"}


UNVERIFIABLE: dict[str, Any] = {
    "a job the ledger does not have": lambda w, a, o: w.request(a, job="0" * 64),
    "evidence whose signature is broken": lambda w, a, o: w.request(a, evidence=_tampered(a)),
    "evidence bound to another nonce": lambda w, a, o: w.request(
        a, evidence=a.evidence(nonce=b64url_encode(b"\x07" * 32))
    ),
    "a nonce the evidence does not bind": lambda w, a, o: w.request(
        a, nonce=b64url_encode(b"\x07" * 32)
    ),
    "keys to another enclave than the evidence binds": lambda w, a, o: w.request(
        a, enclave=o.identity_document()
    ),
    "a member's key for the enclave": lambda w, a, o: w.request(
        a, enclave=w.fx.parties["analyst"].identity_document()
    ),
    "no enclave identity": lambda w, a, o: w.request(a, enclave={"not": "an identity"}),
    "evidence attested too long ago": lambda w, a, o: w.request(
        a, evidence=a.evidence(at=_shifted(w.clock, -11 * MINUTE_MS))
    ),
    "the evidence of another job": lambda w, a, o: w.request(
        a, evidence=Attempt(w.service.desk, w.id, w.job(), w.clock, a.enclave).evidence()
    ),
    "no evidence": lambda w, a, o: {k: v for k, v in w.request(a).items() if k != "evidence"},
    "a nonce that is no nonce": lambda w, a, o: w.request(a, nonce="x"),
}


@pytest.mark.parametrize("case", list(UNVERIFIABLE))
def test_a_request_that_does_not_verify_is_ignored_not_denied(world: OwnerRoom, case: str) -> None:
    job = world.job()
    attempt, genuine = world.ask(job)
    forged = UNVERIFIABLE[case](world, attempt, Party.create("enclave"))
    world.operator.answers["/key-requests"] = [forged]
    agent = world.agent()
    count = len(world.statements())
    assert agent.step() == []
    assert len(world.statements()) == count  # no release, no denial
    assert world.state.jobs[job].status == "requested"
    # a forged request says nothing about the job: the genuine one is still served
    world.operator.answers["/key-requests"] = [forged, genuine]
    assert agent.step() == [Answer(job, "released", "transactions")]


def test_a_genuine_request_of_another_room_is_ignored(world: OwnerRoom) -> None:
    other = OwnerRoom(world.tmp / "other")  # the same operator runs a second room
    job = other.job()
    _, elsewhere = other.ask(job)
    world.operator.answers["/key-requests"] = [elsewhere]
    count = len(world.statements())
    assert world.agent().step() == []
    assert len(world.statements()) == count
    assert job not in world.state.jobs
    assert other.state.jobs[job].status == "requested"


# -- a request the room's rules refuse is denied -----------------------------------------


def test_a_job_whose_input_lost_its_owners_consent_is_denied(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    world.fx.revoke("merchant", "customers")  # after the request, before any release
    reason = "the owner of 'customers' has revoked consent"
    assert world.agent().step() == [Answer(job, "denied", reason)]
    deny = world.statements()[-1]
    assert (deny.kind, deny.author, deny.body.reason) == ("key.deny", _fp(world, "bank"), reason)
    found = world.state.jobs[job]
    assert (found.status, found.reason) == ("failed", f"key release denied: {reason}")


def test_an_enclave_running_code_the_room_did_not_approve_is_denied(world: OwnerRoom) -> None:
    job = world.job()
    attempt, _ = world.ask(job)
    world.operator.answers["/key-requests"] = [
        world.request(attempt, evidence=attempt.evidence(OTHER))
    ]
    answers = world.agent().step()
    assert [(a.job, a.action) for a in answers] == [(job, "denied")]
    assert "measurement" in answers[0].detail
    assert world.statements()[-1].kind == "key.deny"
    assert world.state.jobs[job].status == "failed"


@pytest.mark.parametrize(
    ("policy", "action"),
    [
        (None, "released"),  # no local policy: the room's decides
        (frozenset({CODE}), "released"),
        (frozenset({CODE, OTHER}), "released"),
        (frozenset({OTHER}), "denied"),
        (frozenset(), "denied"),
    ],
)
def test_the_owners_local_measurement_policy_is_applied_on_top_of_the_rooms(
    world: OwnerRoom, policy: frozenset[str] | None, action: str
) -> None:
    job = world.job()
    world.ask(job)
    (answer,) = world.agent(measurements=policy).step()
    assert (answer.job, answer.action) == (job, action)
    last = world.statements()[-1]
    if action == "released":
        assert last.kind == "key.release"
        assert world.state.jobs[job].waiting_for == (_fp(world, "merchant"),)
    else:
        reason = "this measurement is not in the owner's local release policy"
        assert answer.detail == reason
        assert (last.kind, last.body.reason) == ("key.deny", reason)
        assert world.state.jobs[job].reason == f"key release denied: {reason}"


def test_a_denial_the_service_refuses_leaves_the_job_unanswered(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    world.operator.withhold = {"key.deny"}
    agent = world.agent(measurements=frozenset())
    count = len(world.statements())
    assert agent.step() == []  # logged, never raised: the job times out instead
    assert len(world.statements()) == count
    assert world.state.jobs[job].status == "requested"


# -- the vault ---------------------------------------------------------------------------


def test_a_vault_key_that_is_not_the_manifests_key_is_never_released(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    agent = world.agent()
    manifest = world.manifests["transactions"]
    agent.vault.keep(world.id, "transactions", manifest, world.keys["customers"])
    count = len(world.statements())
    with pytest.raises(
        StorageError, match=r"^the vault's key for 'transactions' is not its manifest's key$"
    ):
        agent.step()
    assert len(world.statements()) == count
    assert not (agent.vault.directory / RELEASED_FILE).exists()  # nothing signed
    # the right key back in the vault: the request, never answered, is served
    agent.vault.keep(world.id, "transactions", manifest, world.keys["transactions"])
    assert agent.step() == [Answer(job, "released", "transactions")]


# -- the release memory ------------------------------------------------------------------


def test_a_release_kept_off_the_ledger_is_sent_again_unchanged(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    agent = world.agent()
    world.operator.withhold = {"key.release"}
    with pytest.raises(OperationalError, match="503"):
        agent.step()
    (kept,) = world.operator.kept
    assert "key.release" not in [s.kind for s in world.statements()]
    world.operator.withhold = set()
    assert agent.step() == [Answer(job, "released", "again")]
    assert world.ledger.entries(world.id)[-1].statement == kept  # the same statement
    assert world.state.jobs[job].waiting_for == (_fp(world, "merchant"),)


def test_no_other_job_is_answered_while_a_release_is_off_the_ledger(world: OwnerRoom) -> None:
    first, second = world.job(), world.job()
    _, one = world.ask(first)
    _, two = world.ask(second)
    agent = world.agent()
    world.operator.answers["/key-requests"] = [one]
    world.operator.withhold = {"key.release"}
    with pytest.raises(OperationalError, match="503"):
        agent.step()
    world.operator.withhold = set()
    world.operator.answers["/key-requests"] = [two, one]
    # the second waits (examined again later); the first's release is sent again
    assert agent.step() == [Answer(first, "released", "again")]
    assert world.state.jobs[second].waiting_for == (_fp(world, "bank"), _fp(world, "merchant"))
    assert agent.step() == [Answer(second, "released", "transactions")]
    assert world.state.jobs[second].waiting_for == (_fp(world, "merchant"),)


def test_a_room_whose_operator_withheld_a_release_is_refused_for_good(world: OwnerRoom) -> None:
    first, second = world.job(), world.job()
    _, one = world.ask(first)
    agent = world.agent()
    world.operator.answers["/key-requests"] = [one]
    world.operator.withhold = {"key.release"}
    with pytest.raises(OperationalError, match="503"):
        agent.step()
    world.operator.withhold = set()
    world.fail(first)  # the job ends without the release the owner signed
    del world.operator.answers["/key-requests"]
    _, two = world.ask(second)
    count = len(world.statements())
    assert agent.requests() == [two]
    assert agent.step() == []  # neither released nor denied
    assert len(world.statements()) == count
    # the refusal is kept beside the vault: a restarted agent refuses the room too
    assert json.loads((agent.vault.directory / RELEASED_FILE).read_text())["refused"] == [world.id]
    assert world.agent().step() == []
    assert world.agent(measurements=frozenset()).step() == []  # not even a denial
    assert len(world.statements()) == count
    assert world.state.jobs[second].status == "requested"


# -- the agent's own view of the ledger --------------------------------------------------


def test_a_rolled_back_ledger_is_refused(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    before = world.ledger.export(world.id)  # the operator keeps a copy
    agent = world.agent()
    world.fx.revoke("merchant", "customers")
    agent.room.audit.verify()  # the agent follows the room: it has seen the revocation
    world.operator.answers["/export"] = before  # the ledger as it was before it
    count = len(world.statements())
    with pytest.raises(RollbackError, match="rolled back"):
        agent.step()
    assert len(world.statements()) == count  # no release on the old ledger's word
    assert world.state.jobs[job].status == "requested"


def test_a_ledger_with_an_entry_left_out_is_refused(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    world.fx.revoke("merchant", "customers")
    forged = world.ledger.export(world.id)
    forged = {**forged, "entries": forged["entries"][:-1]}  # the revocation left out
    world.operator.answers["/export"] = forged
    agent = world.agent()
    count = len(world.statements())
    with pytest.raises(IntegrityError, match=r"covers \d+ entries; the export has \d+"):
        agent.step()
    assert len(world.statements()) == count
    assert world.state.jobs[job].status == "requested"


def test_a_ledger_entry_swapped_by_the_operator_is_refused(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    world.fx.revoke("merchant", "customers")
    forged = copy.deepcopy(world.ledger.export(world.id))
    entries = forged["entries"]
    entries[-1]["statement"] = entries[-2]["statement"]  # the revocation: an older statement
    world.operator.answers["/export"] = forged
    agent = world.agent()
    count = len(world.statements())
    with pytest.raises(IntegrityError, match="do not match the signed tree head"):
        agent.step()
    assert len(world.statements()) == count
    assert world.state.jobs[job].status == "requested"


# -- serving -----------------------------------------------------------------------------


def test_serving_outlives_a_bad_pass_and_stops_when_told(
    world: OwnerRoom, caplog: pytest.LogCaptureFixture
) -> None:
    job = world.job()
    world.ask(job)
    forged = world.ledger.export(world.id)
    world.operator.answers["/export"] = {**forged, "entries": forged["entries"][:-1]}
    agent = world.agent()
    stop = threading.Event()
    thread = threading.Thread(
        target=agent.serve, kwargs={"poll_s": 0.02, "stop": stop}, daemon=True
    )
    with caplog.at_level(logging.INFO, logger="cleanroom.agent"):
        thread.start()
        for _ in range(500):
            if any(r.getMessage().startswith("key agent: ") for r in caplog.records):
                break
            time.sleep(0.01)
        del world.operator.answers["/export"]  # the service answers honestly again
        for _ in range(500):
            if world.state.jobs[job].waiting_for == (_fp(world, "merchant"),):
                break
            time.sleep(0.01)
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert world.state.jobs[job].waiting_for == (_fp(world, "merchant"),)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("key agent: ") for m in messages)
    assert f"released job {job[:12]}: transactions" in messages


def test_serving_returns_at_once_when_already_stopped(world: OwnerRoom) -> None:
    job = world.job()
    world.ask(job)
    stop = threading.Event()
    stop.set()
    agent = world.agent()
    thread = threading.Thread(target=agent.serve, kwargs={"stop": stop}, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert world.state.jobs[job].waiting_for == (_fp(world, "bank"), _fp(world, "merchant"))


# -- the agent's clock -------------------------------------------------------------------


def test_the_local_policy_judges_the_evidence_at_the_agents_clock(world: OwnerRoom) -> None:
    world.clock.advance(8 * MINUTE_MS)  # the room's time: 8 minutes ahead of this machine
    job = world.job()
    attempt, _ = world.ask(job)
    # attested 4 minutes later still, by the room's time: fresh at the room's and the
    # agent's clock, 12 minutes old at this machine's wall clock
    evidence = attempt.evidence(at=_shifted(world.clock, 4 * MINUTE_MS))
    world.operator.answers["/key-requests"] = [world.request(attempt, evidence=evidence)]
    # without a local policy the agent releases at its clock, and the ledger records it
    plain = world.agent("merchant", clock=world.clock)
    assert plain.step() == [Answer(job, "released", "customers")]
    # the same request, with a local policy that admits the measurement
    strict = world.agent(clock=world.clock, measurements=frozenset({CODE}))
    assert strict.step() == [Answer(job, "released", "transactions")]
