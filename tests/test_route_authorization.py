"""Every route of the service against every kind of caller, over HTTP.

The expectations below are written out by hand from the threat model, not
derived from :mod:`cleanroom.service.access`: a route whose access kind changes
must change this file too. The service is the real app and its real key desk
and broker, served by uvicorn on a socket, over a room built with real
statements: members invited, active, declined and removed, a result recipient,
two running jobs with attested enclaves, a finished one, and jobs launched but
not yet released.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from cleanroom import Party
from cleanroom.governance import new_room_id, room_create
from cleanroom.governance.statements import member_decline
from cleanroom.protocol.requests import sign_request
from cleanroom.service import access
from cleanroom.service import app as app_module
from cleanroom.service.access import ROUTE_ACCESS, Access
from cleanroom.service.app import Service, create_app
from cleanroom.service.blobs import LocalBlobStore
from tests.rooms import Attempt, Clock, RoomFixture, make_ledger
from tests.test_key_release import JobRoom, _complete

CALLERS = (
    "stranger",  # (a) a valid key, in no room: the service does not know it
    "other_room",  # (b) an active member of another room
    "invited",  # (c) invited, not yet accepted
    "active",  # (d) an active member (not a recipient of the job's result)
    "declined",  # (e) declined the invitation
    "removed",  # (f) voted out (reads history up to its removal)
    "recipient",  # (g) an active member, recipient of the job's result
    "job_enclave",  # (h) the attested enclave of the running job (holds its launch token)
    "other_enclave",  # (i) the enclave of another running job of the room
    "finished_enclave",  # (i) the enclave of a job that has finished
    "unsigned",  # (j) no signature at all
)
SIGNERS = frozenset(CALLERS) - {"unsigned"}
KNOWN = SIGNERS - {"stranger"}
MEMBERS = frozenset({"invited", "active", "recipient"})
ENCLAVES = frozenset({"job_enclave", "other_enclave"})  # of jobs running in the room

# who may call a route of each kind (the specification this test pins)
ALLOWED: dict[Access, frozenset[str]] = {
    Access.PUBLIC: frozenset(CALLERS),
    Access.OPERATOR: frozenset(),  # the operator's bearer token: no party holds it
    Access.CREATOR: SIGNERS,  # each signs a room.create naming itself
    Access.LAUNCHED: frozenset({"job_enclave"}),
    Access.SIGNED: KNOWN,
    Access.MEMBER: MEMBERS,
    Access.HISTORY: MEMBERS | {"removed"},
    Access.HISTORY_OR_ENCLAVE: MEMBERS | {"removed"} | ENCLAVES,
    Access.MEMBER_OR_ENCLAVE: MEMBERS | ENCLAVES,
    Access.RECIPIENT: frozenset({"recipient"}),
    Access.JOB_ENCLAVE: frozenset({"job_enclave"}),
}
UNSIGNED = "the request is not signed (RFC 9421 signature required)"
UNKNOWN_KEY = "the request signature does not verify: the request is signed by an unknown key"
NO_LAUNCH = "no enclave was launched for this job with that token"
NOT_A_MEMBER = "you are not a member of this room"
NO_METRICS = "this service serves no metrics (its operator has set no metrics_token)"
REFUSED_ENCLAVE = {
    "/v1/rooms/{room}/jobs/{job}/result/{digest}": (
        "only the job's attested enclave uploads its result"
    ),
    "/v1/rooms/{room}/jobs/{job}/report": "only the job's attested enclave reports its outcome",
}
# an allowed caller refused by the route's own rule about *what*, not *who*
RESOURCE_RULES = {
    ("PUT", "/v1/rooms/{room}/blobs/{digest}", "invited"): (
        403,
        "upload only ciphertext whose digest is in a manifest you proposed in this room",
    ),
}
PUBLIC_ROUTES = {
    ("GET", "/v1/health"),
    ("GET", "/v1/service"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
}
OPERATOR_ROUTES = {("GET", "/metrics")}
LAUNCHED_ROUTES = {
    ("POST", "/v1/rooms/{room}/jobs/{job}/challenge"),
    ("POST", "/v1/rooms/{room}/jobs/{job}/keys"),
    ("POST", "/v1/rooms/{room}/jobs/{job}/key-status"),
}


# refused whoever asks: no launch token of the job; no metrics token on this service
FIXED_REFUSALS = {Access.LAUNCHED: (401, NO_LAUNCH), Access.OPERATOR: (404, NO_METRICS)}


def refusal(kind: Access, path: str, caller: str) -> tuple[int, str]:
    """The exact answer a refused caller gets."""
    if kind in FIXED_REFUSALS:
        return FIXED_REFUSALS[kind]
    if caller == "unsigned":
        return 401, UNSIGNED
    if caller == "stranger":
        return 401, UNKNOWN_KEY
    if kind is Access.JOB_ENCLAVE:
        return 403, REFUSED_ENCLAVE[path]
    if kind is Access.RECIPIENT and caller in MEMBERS:
        return 403, "only the job's result recipients may fetch its result"
    return 403, NOT_A_MEMBER


@dataclass
class World:
    url: str
    jr: JobRoom
    parties: dict[str, Party]
    running: str  # the job of job_enclave
    finished: str  # a succeeded job, its result sealed to the recipient
    launched: str  # a job launched but not released: the LAUNCHED routes' target
    tokens: dict[str, str]  # caller -> a launch token it holds (of its own job)
    manifests: dict[str, str]  # caller -> the ciphertext digest of a manifest it proposed
    input_digest: str  # a registered dataset, an input of the running jobs

    @property
    def room(self) -> str:
        return self.jr.room.room


def _invite(fixture: RoomFixture, name: str) -> str:
    """``name`` invited by an add_member proposal that the voters accept."""
    fixture.parties[name] = Party.create(name)
    pid = fixture.propose(
        "bank",
        {
            "type": "add_member",
            "identity": fixture.parties[name].identity_document(),
            "roles": ["observer"],
        },
    )
    _decide(fixture, pid)
    return pid


def _decide(fixture: RoomFixture, pid: str) -> None:
    for voter in ("bank", "merchant", "analyst", "auditor"):
        if fixture.status(pid) != "open":
            break
        fixture.vote(voter, pid)
    assert fixture.status(pid) == "accepted", fixture.status(pid)


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("routes")
    jr = JobRoom(tmp)
    fixture, room = jr.room, jr.room.room
    # (c) invited, (e) declined, (f) removed: members added after the room formed
    _invite(fixture, "invited")  # and never accepts
    declined = _invite(fixture, "declined")
    fixture.submit(member_decline(fixture.parties["declined"], room, declined, now=fixture.clock))
    removed = _invite(fixture, "removed")
    fixture.accept("removed", removed)
    pid = fixture.propose("bank", {"type": "remove_member", "member": fixture.fp("removed")})
    _decide(fixture, pid)
    # (b) a member of another room on the same service
    other = RoomFixture(jr.ledger, jr.clock, roles={"other": ["analyst"]})
    # jobs: two running (h and i), one finished (i), and launched ones for the LAUNCHED routes
    attempts = {}
    for name in ("job_enclave", "other_enclave", "finished_enclave"):
        job = jr.request()
        attempts[name] = Attempt(jr.desk, room, job, jr.clock)
        attempts[name].release()
    finished = attempts["finished_enclave"].job
    _complete(jr, finished, attempts["finished_enclave"].enclave)
    assert jr.state.jobs[finished].status == "succeeded"
    launched = jr.request()
    jr.desk.launch(room, launched)
    state = jr.state
    manifests: dict[str, str] = {}
    for proposal in state.proposals.values():
        if proposal.action.type == "register_dataset":
            for name, party in fixture.parties.items():
                if proposal.proposer == party.fingerprint:
                    manifests.setdefault(
                        {"bank": "recipient", "merchant": "active"}.get(name, name),
                        proposal.action.manifest["payload"]["ciphertext"]["sha256"],
                    )
    running = attempts["job_enclave"].job
    name, version = state.jobs[running].released[0]
    parties = {
        "stranger": Party.create("stranger"),
        "other_room": other.parties["other"],
        "invited": fixture.parties["invited"],
        "active": fixture.parties["merchant"],
        "declined": fixture.parties["declined"],
        "removed": fixture.parties["removed"],
        "recipient": fixture.parties["bank"],
        **{n: a.enclave for n, a in attempts.items()},
    }
    service = Service(jr.ledger, LocalBlobStore(tmp / "blobs"), LocalBlobStore(tmp / "results"))
    service.desk = jr.desk  # the launch tokens above, and the room's attested broker
    for attempt in attempts.values():
        service.trust_enclave(jr.state.jobs[attempt.job])
    with _serve(create_app(service)) as url:
        yield World(
            url=url,
            jr=jr,
            parties=parties,
            running=running,
            finished=finished,
            launched=launched,
            tokens={n: a.token for n, a in attempts.items() if n != "job_enclave"},
            manifests=manifests,
            input_digest=state.version(name, version).manifest.sha256,
        )


def _request(world: World, method: str, path: str, caller: str) -> httpx.Request:
    """The request ``caller`` makes on the route: well formed, so that an allowed
    caller gets past every rule about who it is."""
    kind = ROUTE_ACCESS[(method, path)]
    job = {
        Access.RECIPIENT: world.finished,
        Access.LAUNCHED: world.launched,
    }.get(kind, world.running)
    digest = world.input_digest
    if method == "PUT" and kind is Access.MEMBER:
        digest = world.manifests.get(caller, world.input_digest)
    body = b"x"
    if kind is Access.JOB_ENCLAVE and method == "PUT":
        digest = hashlib.sha256(body).hexdigest()
    target = path.format(room=world.room, seq=0, digest=digest, job=job)
    params: dict[str, Any] = {}
    content: bytes | None = None
    party = world.parties.get(caller)
    if path.endswith("/consistency"):
        params = {"old": 0, "new": 0}
    elif path == "/v1/broker":
        params = {"nonce": "n" * 16}
    if (method, path) == ("POST", "/v1/rooms"):
        # a stranger who creates a room is a stranger no more: a fresh one each time
        creator = party if party is not None and caller != "stranger" else Party.create(caller)
        party = creator if party is not None else None
        token = room_create(
            creator,
            new_room_id(),
            name="own",
            members=[(creator.identity_document(), ["analyst"])],
            now=world.jr.clock,
        )
        content = json.dumps({"statement": token}).encode()
    elif path.endswith("/statements"):
        content = json.dumps({"statements": ["A" * 40]}).encode()
    elif path.endswith("/report"):
        content = json.dumps({"statement": "A" * 40}).encode()
    elif kind is Access.LAUNCHED:
        content, target = _launched(world, path, caller)
    elif method == "PUT":
        content = body if kind is Access.JOB_ENCLAVE else b""
    request = httpx.Request(method, f"{world.url}{target}", params=params, content=content)
    if party is not None:
        if method == "PUT":
            sign_request(request, None, party, body_sha256=digest)
        else:
            sign_request(request, content or b"", party)
    return request


def _launched(world: World, path: str, caller: str) -> tuple[bytes, str]:
    """The body of a LAUNCHED route: the caller's own launch token, if it has one.
    The job's own enclave (h) gets a freshly launched job of its own, so each case
    stands alone (a release makes a job run)."""
    job, token = world.launched, world.tokens.get(caller, secrets.token_urlsafe(32))
    body: dict[str, Any] = {"launch_token": token}
    if caller == "job_enclave":
        job = world.jr.request()
        attempt = Attempt(world.jr.desk, world.room, job, world.jr.clock)
        body = {"launch_token": attempt.token}
        if path.endswith("/keys"):
            body |= {
                "nonce": attempt.nonce,
                "enclave": attempt.enclave.identity_document(),
                "evidence": attempt.evidence(),
            }
    elif path.endswith("/keys"):
        body |= {"nonce": "n" * 43, "enclave": {}, "evidence": {}}
    target = path.format(room=world.room, job=job)
    return json.dumps(body).encode(), target


ROUTES = sorted(ROUTE_ACCESS)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_each_route_admits_exactly_its_callers(
    world: World, method: str, path: str, caller: str
) -> None:
    kind = ROUTE_ACCESS[(method, path)]
    with httpx.Client(timeout=60) as http:
        answer = http.send(_request(world, method, path, caller))
    problem = answer.headers.get("content-type") == "application/problem+json"
    detail = answer.json()["detail"] if problem else None
    if caller in ALLOWED[kind]:
        rule = RESOURCE_RULES.get((method, path, caller))
        if rule is not None:
            assert (answer.status_code, detail) == rule, answer.text
        else:
            assert answer.status_code not in (401, 403), answer.text
            assert answer.status_code < 500, answer.text
    else:
        assert (answer.status_code, detail) == refusal(kind, path, caller), answer.text
        assert answer.headers["content-type"] == "application/problem+json"


def _service(tmp: Path) -> Service:
    ledger = make_ledger(tmp / "ledger", Clock())
    return Service(ledger, LocalBlobStore(tmp / "blobs"), LocalBlobStore(tmp / "results"))


def test_the_table_lists_every_route_the_app_serves_and_no_other(tmp_path: Path) -> None:
    app = create_app(_service(tmp_path))
    served = set()
    for route in app.routes:
        for method in getattr(route, "methods", None) or ():
            served.add(("GET" if method == "HEAD" else method, getattr(route, "path", "")))
    assert served == set(ROUTE_ACCESS)
    assert set(ALLOWED) == set(Access)  # every kind has its expectation above
    # the few routes that need no signature, by name
    assert {r for r, k in ROUTE_ACCESS.items() if k is Access.PUBLIC} == PUBLIC_ROUTES
    assert {r for r, k in ROUTE_ACCESS.items() if k is Access.LAUNCHED} == LAUNCHED_ROUTES
    assert {r for r, k in ROUTE_ACCESS.items() if k is Access.OPERATOR} == OPERATOR_ROUTES
    spec = app.openapi()
    assert {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops} == set(
        ROUTE_ACCESS
    ) - {("GET", "/openapi.json"), ("GET", "/docs")}


def test_an_app_with_a_route_missing_from_the_table_does_not_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    public = app_module._public_routes

    def with_extra(app: FastAPI, service: Service) -> None:
        public(app, service)

        @app.get("/v1/rooms/{room}/new-thing")
        def new_thing(room: str) -> dict[str, str]:
            return {"room": room}

    monkeypatch.setattr(app_module, "_public_routes", with_extra)
    with pytest.raises(RuntimeError, match="new-thing has no entry in the access table"):
        create_app(service)


def test_a_table_entry_no_route_serves_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {**ROUTE_ACCESS, ("DELETE", "/v1/rooms/{room}"): Access.MEMBER}
    monkeypatch.setattr(access, "ROUTE_ACCESS", MappingProxyType(extra))
    with pytest.raises(RuntimeError, match="nobody serves"):
        create_app(_service(tmp_path))


def test_a_route_that_skips_authorize_fails_the_check() -> None:
    bare = FastAPI(openapi_url=None)  # no authorize dependency on its routes

    @bare.get("/v1/health")
    def health() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="does not run authorize"):
        access.check_routes(bare.routes)
