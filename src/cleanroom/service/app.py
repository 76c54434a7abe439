"""The clean room service: rooms, statements, the ledger and ciphertext, over HTTP.

Every route but ``/v1/health``, ``/v1/service``, ``/openapi.json``, ``/docs``
and ``/metrics`` (the operator's bearer token) needs an RFC 9421 signature
(:mod:`cleanroom.service.auth`). Room routes further need the signer to be a
member of that room (invited or active); a party that declined or a stranger
gets 403 whether or not the room exists, so room ids leak nothing. A removed
member reads the ledger up to and including the entry that removed it
(entries, receipts, export; tree heads and consistency proofs to link what it
saw) and may submit ``consent.revoke``; nothing else.
:mod:`cleanroom.service.access` decides who may call each route, from one
table: an app with a route missing from it does not build. Errors are RFC 9457
problem details (:mod:`cleanroom.service.problems`). Every request is timed,
counted and logged without its query, headers or body
(:mod:`cleanroom.service.observe`).

The service never decrypts anything: it stores ciphertext whose digest a
member signed, and orders statements members signed. It holds no data key:
its key desk (:mod:`cleanroom.broker.desk`) passes enclaves' key requests to
the owners' key agents and to the attested key broker, a process of its own
whose key the service never sees; the job runner
(:mod:`cleanroom.service.jobs`) starts those enclaves.
An enclave authenticates with its attested ephemeral key while its job runs,
and may then read the ledger, download its inputs and report its result.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cleanroom import __version__
from cleanroom.broker.desk import KeyDesk
from cleanroom.crypto import jws
from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    DeserializationError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
)
from cleanroom.governance.model import Job
from cleanroom.governance.outcomes import bytes_bucket
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import STATEMENT_TYP, parse_statement
from cleanroom.governance.views import job_view, proposal_views, room_view
from cleanroom.ledger.entries import TREE_HEAD_TYP
from cleanroom.ledger.log import Ledger
from cleanroom.service import problems
from cleanroom.service.access import (
    JOB_ID,
    ROOM_ID,
    ROUTE_ACCESS,
    Grant,
    authorize,
    check_routes,
)
from cleanroom.service.auth import (
    NonceCache,
    check_body_digest,
    content_sha256,
    verify_request,
)
from cleanroom.service.blobs import BlobStore, check_digest
from cleanroom.service.docs import CSP, render_docs
from cleanroom.service.jobs import JobRunner
from cleanroom.service.limits import BodyGuard, BodyLimits
from cleanroom.service.metrics import CONTENT_TYPE, Family, RequestMetrics, gauge, render
from cleanroom.service.observe import PARTY_KEY, AccessLog

Token = Annotated[str, Field(min_length=10, max_length=1 << 22)]
RoomId = Annotated[str, PathParam(pattern=ROOM_ID, description="A room id.")]
MAX_SEQ = 2**53 - 1  # positions fit JSON numbers and every store's integers
Seq = Annotated[int, PathParam(ge=0, le=MAX_SEQ, description="An entry's position.")]
Digest = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="A SHA-256, hex.")]

# (method, path, who may call it) for every route, from the access table
ROUTES: list[tuple[str, str, str]] = [(m, p, a.who) for (m, p), a in ROUTE_ACCESS.items()]


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str
    title: str
    status: int
    detail: str


_PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid input", **_PROBLEM},
    401: {"description": "Unsigned, badly signed, stale or replayed request", **_PROBLEM},
    403: {"description": "Not a member of this room, or not allowed", **_PROBLEM},
    404: {"description": "No such object", **_PROBLEM},
    408: {"description": "The request body arrived too slowly", **_PROBLEM},
    409: {"description": "Not allowed by the room's rules", **_PROBLEM},
    413: {"description": "The request body is too large", **_PROBLEM},
    422: {"description": "The request does not match its schema", **_PROBLEM},
    503: {"description": "The service cannot serve this now", **_PROBLEM},
}


class SubmitStatements(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statements: list[Token] = Field(min_length=1, max_length=1000)


class Challenge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    launch_token: str = Field(min_length=16, max_length=128)


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    launch_token: str = Field(min_length=16, max_length=128)
    nonce: str = Field(min_length=43, max_length=43)
    enclave: dict[str, Any]
    evidence: dict[str, Any]


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statement: Token


CHECKS_BURST = 8  # analyses one party may propose at once
CHECK_REFILL_S = 5.0  # and then one more every this many seconds


@dataclass(frozen=True)
class RoomPolicy:
    """Who may create rooms on this service, and how often: without it anyone can
    fill the service with rooms that list any public identity as invited."""

    creators: frozenset[str] | None = None  # fingerprints; None: any valid identity
    per_hour: int = 20


class Service:
    """State shared by the routes: the ledger, the blob stores (dataset
    ciphertext, job results: kept apart, so that what a blob is decides who
    reads it), known keys, nonces, the key broker and (when jobs can run) the
    job runner. ``nonces`` persists the replay window (a file) across restarts."""

    def __init__(
        self,
        ledger: Ledger,
        blobs: BlobStore,
        results: BlobStore,
        *,
        max_skew_s: int = 300,
        max_upload_bytes: int = 64 << 30,
        limits: BodyLimits | None = None,
        nonces: Path | None = None,
        rooms: RoomPolicy | None = None,
        member_quota_bytes: int = 256 << 30,
        metrics_token: str | None = None,
        metrics_per_room: bool = False,
        access_log: bool = True,
    ) -> None:
        self.member_quota_bytes = member_quota_bytes
        self.metrics_token = metrics_token  # None: /metrics is off
        self.metrics_per_room = metrics_per_room
        self.access_log = access_log
        self.metrics = RequestMetrics()
        self.room_policy = rooms or RoomPolicy()
        self._created: dict[str, list[float]] = {}
        self._checks: dict[str, tuple[float, float]] = {}  # party -> (tokens, when)
        self.ledger = ledger
        self.blobs = blobs
        self.results = results
        self.max_skew_s = max_skew_s
        self.max_upload_bytes = max_upload_bytes
        self.limits = limits or BodyLimits()
        self.nonces = NonceCache(window_s=2 * max_skew_s, path=nonces)
        self.desk = KeyDesk(ledger)
        self.runner: JobRunner | None = None
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._lock = threading.Lock()
        for room in ledger.healthy_rooms():  # a quarantined room is not served
            self.learn(ledger.state(room))

    def learn(self, state: RoomState) -> None:
        with self._lock:
            for fingerprint, member in state.members.items():
                self._keys[fingerprint] = member.identity.signing_key

    def admit_room_creator(self, fingerprint: str) -> None:
        """Refuse creators the operator does not admit, and more than the policy's
        rooms per hour from one creator."""
        policy = self.room_policy
        if policy.creators is not None and fingerprint not in policy.creators:
            raise AuthorizationError("this service does not let you create rooms")
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._created.get(fingerprint, []) if now - t < 3600]
            if len(recent) >= policy.per_hour:
                raise RateLimitedError(
                    f"you created {policy.per_hour} rooms in the last hour; try again later"
                )
            self._created[fingerprint] = [*recent, now]

    def admit_checks(self, fingerprint: str, count: int) -> None:
        """Bound what one party's proposed analyses cost the service: each is a policy
        check (parsing up to 16 KiB of SQL), so a party gets ``CHECKS_BURST`` of them
        at once and one more every ``CHECK_REFILL_S`` seconds; past that, 429."""
        if count == 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._checks.get(fingerprint, (float(CHECKS_BURST), now))
            tokens = min(float(CHECKS_BURST), tokens + (now - last) / CHECK_REFILL_S)
            if tokens < count:
                raise RateLimitedError(
                    f"you proposed too many analyses in a short time; one more may be "
                    f"proposed every {CHECK_REFILL_S:g} s"
                )
            self._checks[fingerprint] = (tokens - count, now)

    def trust_enclave(self, job: Job) -> None:
        """Accept request signatures by a job's attested enclave (authorization
        still checks, on each request, that its job is running)."""
        if job.enclave is not None:
            with self._lock:
                self._keys[job.enclave.fingerprint] = job.enclave.signing_key

    def key(self, fingerprint: str) -> Ed25519PublicKey | None:
        with self._lock:
            return self._keys.get(fingerprint)

    def start_jobs(self, room: str, tokens: list[str]) -> None:
        if self.runner is None:
            return
        for token in tokens:
            statement = parse_statement(token)
            if statement.kind == "job.request":
                self.runner.submit(room, statement.digest)

    def authenticate(
        self, request: Request, body: bytes | None, extra: dict[str, Any] | None = None
    ) -> str:
        """The signer of ``request``; ``body=None`` checks the signature over the
        headers only (then check the body with :meth:`signed_body`)."""

        def lookup(key_id: str) -> Ed25519PublicKey | None:
            return self.key(key_id) or (extra or {}).get(key_id)

        signer = verify_request(
            request.method,
            _signed_url(request),
            dict(request.headers),
            body,
            lookup=lookup,
            nonces=self.nonces,
            max_skew_s=self.max_skew_s,
        )
        request.scope[PARTY_KEY] = signer  # for the access log: who, never how
        return signer

    async def signed_body(self, request: Request) -> tuple[str, bytes]:
        """Authenticate from the headers first, only then read the body (capped by
        :class:`BodyGuard`) and check it against the signed Content-Digest."""
        who = self.authenticate(request, None)
        body = await request.body()
        check_body_digest(request.headers, body)
        return who, body


def _signed_url(request: Request) -> str:
    """The request target exactly as sent (percent-encoding and all), which is
    what the client signed: routing works on the decoded path, and decoding is
    a function of what was signed."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    target = raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    return f"{request.url.scheme}://{request.url.netloc}{target}"


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="cleanroom",
        version=__version__,
        description="A confidential clean room: rooms, signed statements, an auditable "
        "ledger and encrypted datasets. Requests are signed with HTTP Message Signatures "
        "(RFC 9421); errors are RFC 9457 problem details.",
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(authorize)],  # who may call each route: the access table
    )
    problems.install(app)
    app.state.service = service
    _public_routes(app, service)
    _room_routes(app, service)
    _ledger_routes(app, service)
    _blob_routes(app, service)
    _job_routes(app, service)
    _enclave_routes(app, service)
    _operator_routes(app, service)
    check_routes(app.routes)  # fail closed: a route without an access rule is not served
    app.add_middleware(BodyGuard, limits=service.limits)
    # outermost: it also times and counts the answers BodyGuard gives
    app.add_middleware(AccessLog, metrics=service.metrics, log=service.access_log)
    return app


# the caller's grant, as the access table decided it (computed once per request)
Granted = Annotated[Grant, Depends(authorize)]


def _public_routes(app: FastAPI, service: Service) -> None:

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        """Up; rooms whose stored history failed verification are listed (quarantined:
        refused, while every other room is served)."""
        quarantined = sorted(service.ledger.quarantined)
        return {
            "status": "degraded" if quarantined else "ok",
            "version": __version__,
            "quarantined_rooms": quarantined,
        }

    @app.get("/v1/service")
    def service_identity() -> dict[str, Any]:
        """The ledger service's self-signed public identity (its tree-head key)."""
        return service.ledger.service.identity_document()


def _operator_routes(app: FastAPI, service: Service) -> None:
    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The API reference, with no script and no external asset."""
        return HTMLResponse(
            render_docs(app.openapi(), {(m, p): who for m, p, who in ROUTES}),
            headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    )
    def metrics() -> PlainTextResponse:
        """Prometheus text format 0.0.4, for the operator (its bearer token)."""
        families = [*service.metrics.families(), *service_families(service)]
        return PlainTextResponse(render(families), media_type=CONTENT_TYPE)


_STARTED = time.time()


def service_families(service: Service) -> list[Family]:
    """Gauges read at scrape time: rooms, ledger entries and jobs, all totals (per
    room ledger sizes only when the operator turned on ``metrics_per_room``)."""
    ledger = service.ledger
    rooms: dict[tuple[tuple[str, str], ...], float] = {
        (("status", s),): 0 for s in ("pending", "active", "declined")
    }
    rooms[(("status", "quarantined"),)] = len(ledger.quarantined)
    jobs: dict[tuple[tuple[str, str], ...], float] = {
        (("state", s),): 0 for s in ("requested", "running", "succeeded", "failed")
    }
    entries: dict[tuple[tuple[str, str], ...], float] = {}
    total = 0
    for room in ledger.healthy_rooms():
        state = ledger.state(room)
        key = (("status", str(state.status)),)
        rooms[key] = rooms.get(key, 0) + 1
        for job in state.jobs.values():
            key = (("state", str(job.status)),)
            jobs[key] = jobs.get(key, 0) + 1
        size = ledger.size(room)
        total += size
        if service.metrics_per_room:
            entries[(("room", room),)] = size
    queued, running = service.runner.load() if service.runner is not None else (0, 0)
    families = [
        gauge("cleanroom_rooms", "Rooms on this ledger, by status.", rooms),
        gauge("cleanroom_ledger_entries", "Entries in every room's ledger, in all.", {(): total}),
        gauge("cleanroom_jobs", "Jobs recorded on the ledger, by state.", jobs),
        gauge(
            "cleanroom_job_runner_jobs",
            "Jobs this service process is running or holds in its queues.",
            {(("state", "queued"),): queued, (("state", "running"),): running},
        ),
        gauge(
            "cleanroom_build_info",
            "The cleanroom version serving.",
            {(("version", __version__),): 1},
        ),
        gauge("process_start_time_seconds", "When the service process started.", {(): _STARTED}),
    ]
    if service.metrics_per_room:
        families.append(
            gauge("cleanroom_room_ledger_entries", "Entries in one room's ledger.", entries)
        )
    return families


def _room_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/rooms", status_code=201)
    async def create_room(grant: Granted) -> dict[str, Any]:
        """The statement's author, authenticated with the key the statement lists."""
        if grant.creation is None:
            raise RuntimeError("a room is created on a CREATOR grant")
        token, statement = grant.creation
        service.admit_room_creator(grant.signer)
        # ledger work leaves the event loop: a busy room must never stall the others
        return await asyncio.to_thread(_create_room, service, token, statement.room)

    @app.get("/v1/rooms")
    def list_rooms(grant: Granted) -> list[dict[str, Any]]:
        """The rooms the caller belongs to or is invited to (and no other: not
        another party's invitations, nor rooms it declined or was removed from)."""
        visible = []
        for room in service.ledger.healthy_rooms():
            state = service.ledger.state(room)
            member = state.members.get(grant.signer)
            if member is not None and member.status in ("invited", "active"):
                visible.append(
                    {
                        "room": room,
                        "name": state.name,
                        "status": state.status,
                        "contract_version": state.contract_version,
                        "you": member.status,
                    }
                )
        return visible

    @app.get("/v1/rooms/{room}")
    def room_state(room: RoomId, grant: Granted) -> dict[str, Any]:
        return room_view(grant.room)

    @app.get("/v1/rooms/{room}/proposals")
    def proposals(room: RoomId, grant: Granted) -> list[dict[str, Any]]:
        return proposal_views(grant.room)

    @app.post(
        "/v1/rooms/{room}/statements",
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SubmitStatements.model_json_schema()}},
            }
        },
    )
    async def submit(
        room: RoomId,
        request: Request,
        grant: Granted,
        known: Annotated[
            int | None,
            Query(
                ge=0,
                le=MAX_SEQ,
                description="The tree size you last verified: the answer "
                "then carries the consistency proof from it.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        body = await request.body()  # read, and checked, once the signature was
        try:
            payload = SubmitStatements.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(_errors(exc, "body")) from exc
        # ledger work leaves the event loop: a busy room must never stall the others
        return await asyncio.to_thread(_submit, service, room, grant, payload, known)


def _errors(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    return [
        {**e, "loc": (where, *e.get("loc", ()))}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _create_room(service: Service, token: str, room: str) -> dict[str, Any]:
    entry = service.ledger.create_room(token)
    state = service.ledger.state(room)
    service.learn(state)
    return {"room": room, "seq": entry.seq, "status": state.status}


def _submit(
    service: Service, room: str, grant: Grant, payload: SubmitStatements, known: int | None
) -> dict[str, Any]:
    who = grant.signer
    if grant.readable is not None and any(  # a removed member
        parse_statement(t).kind != "consent.revoke" for t in payload.statements
    ):
        # the ledger refuses the rest too; the service does not even try
        raise AuthorizationError("a removed member can only revoke consent for its data")
    checked = sum(1 for t in payload.statements if _needs_policy_check(t))
    if checked > MAX_CHECKED_PER_REQUEST:
        raise InvalidInputError(
            f"at most {MAX_CHECKED_PER_REQUEST} analyses may be proposed in one request "
            f"(this one has {checked}); send them in several"
        )
    service.admit_checks(who, checked)
    for token in payload.statements:
        if jws.parse(token, typ=STATEMENT_TYP).kid != who:  # the ledger checks the rest
            raise AuthorizationError("submit only statements you signed yourself")
    entries = service.ledger.submit(room, payload.statements, with_receipts=True)
    service.learn(service.ledger.state(room))
    service.start_jobs(room, payload.statements)
    receipts = service.ledger.receipts(room, entries)
    answer: dict[str, Any] = {
        "entries": [e.to_json() for e in entries],
        "receipts": [r.to_json() for r in receipts],
    }
    head = receipts[-1].tree_head
    if known is not None and known <= head.size:
        proof = service.ledger.consistency_proof(room, known, head.size)
        answer["consistency"] = {
            "old": known,
            "new": head.size,
            "proof": [h.hex() for h in proof],
        }
    return answer


MAX_CHECKED_PER_REQUEST = 8  # analyses proposed per request: each costs a policy check


def _needs_policy_check(token: str) -> bool:
    try:
        statement = parse_statement(token)
    except CleanroomError:
        return False  # the ledger refuses it with the reason
    action = getattr(statement.body, "action", None)
    return getattr(action, "type", None) == "add_analysis"


def _ledger_routes(app: FastAPI, service: Service) -> None:
    @app.get("/v1/rooms/{room}/entries")
    def entries(
        room: RoomId,
        grant: Granted,
        start: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
    ) -> dict[str, Any]:
        readable = grant.readable
        end = start + limit if readable is None else min(start + limit, readable)
        chosen = service.ledger.entries(room, start, end)
        return {"entries": [e.to_json() for e in chosen]}

    @app.get("/v1/rooms/{room}/tree-head")
    def tree_head(room: RoomId, _: Granted) -> dict[str, str]:
        """The latest signed tree head, to members and removed members alike (a
        removed member's own consent.revoke receipts carry later heads anyway)."""
        return {"tree_head": service.ledger.tree_head(room).token}

    @app.get("/v1/rooms/{room}/receipts/{seq}")
    def receipt(room: RoomId, seq: Seq, grant: Granted) -> dict[str, Any]:
        readable = grant.readable
        if readable is not None and seq >= readable:
            raise AuthorizationError("a removed member reads the history up to its removal")
        return service.ledger.receipt(room, seq).to_json()

    @app.get("/v1/rooms/{room}/consistency")
    def consistency(
        room: RoomId,
        _: Granted,
        old: Annotated[int, Query(ge=0, le=MAX_SEQ)],
        new: Annotated[int, Query(ge=0, le=MAX_SEQ)],
    ) -> dict[str, list[str]]:
        # hashes only: a removed member links the heads it saw
        return {"proof": [h.hex() for h in service.ledger.consistency_proof(room, old, new)]}

    @app.get("/v1/rooms/{room}/export")
    def export(room: RoomId, grant: Granted) -> dict[str, Any]:
        if grant.readable is None:  # a member, or a running job's enclave
            return service.ledger.export(room)
        return _prefix_export(service, room, grant.readable)


def _prefix_export(service: Service, room: str, size: int) -> dict[str, Any]:
    """A removed member's export: the first ``size`` entries (up to and including
    its removal), the signed tree heads among them, and under ``prefix`` the latest
    signed tree head with a consistency proof from those entries to it. So the
    prefix verifies offline whether or not a head was signed at exactly its size,
    and extends every head the member saw, its own later receipts' included."""
    document = service.ledger.export(room)  # its last head covers all its entries
    heads: list[str] = document["tree_heads"]
    latest = heads[-1]
    within = [t for t in heads if _head_size(t) <= size]
    proof = service.ledger.consistency_proof(room, size, _head_size(latest))
    return {
        **document,
        "entries": document["entries"][:size],
        "tree_heads": within,
        "prefix": {"tree_head": latest, "consistency": [h.hex() for h in proof]},
    }


def _head_size(token: str) -> int:
    """The size a tree head this service signed and stored names (not re-verified)."""
    size = json.loads(jws.parse(token, typ=TREE_HEAD_TYP).payload)["size"]
    if not isinstance(size, int):
        raise TypeError("a stored tree head has no size")
    return size


def _blob_routes(app: FastAPI, service: Service) -> None:
    @app.put("/v1/rooms/{room}/blobs/{digest}", status_code=201)
    async def upload(
        room: RoomId, digest: Digest, request: Request, grant: Granted
    ) -> dict[str, Any]:
        check_digest(digest)
        who, state = grant.signer, grant.room  # the body is checked as it streams in
        if content_sha256(request.headers) != digest:
            raise AuthenticationError("Content-Digest does not name the blob being uploaded")
        manifest = _owned_manifest(state, digest, who)
        if manifest is None:
            raise AuthorizationError(
                "upload only ciphertext whose digest is in a manifest you proposed in this room"
            )
        size = int(manifest["payload"]["ciphertext"]["bytes"])
        if size > service.max_upload_bytes:
            raise IntegrityError(f"the dataset is larger than this service accepts ({size} bytes)")
        # the declared size is checked against the member's quota in this room before a
        # byte is accepted: announcing a huge manifest reserves nothing on disk
        stored = sum(
            int(m["payload"]["ciphertext"]["bytes"])
            for m in _proposed_manifests(state, who)
            if m["payload"]["ciphertext"]["sha256"] != digest
            and who in service.blobs.uploaders(room, m["payload"]["ciphertext"]["sha256"])
        )
        if stored + size > service.member_quota_bytes:
            raise RateLimitedError(
                f"this upload ({size} bytes) would take you past your quota in this room "
                f"({service.member_quota_bytes} bytes; {stored} used)"
            )
        # the whole upload, even of bytes stored for another room: a room holds only
        # what one of its members proved to have (a digest read on another room's
        # ledger is not the bytes)
        await service.blobs.put(digest, size, request.stream())
        service.blobs.claim(room, digest, who)
        return {"digest": digest, "bytes": size}

    @app.get(
        "/v1/rooms/{room}/blobs/{digest}",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The ciphertext"}
        },
    )
    def download(room: RoomId, digest: Digest, grant: Granted) -> StreamingResponse:
        """Dataset ciphertext only (job results come from their own route and store):
        a registered version's to members, a released input's to its job's enclave.
        A model's ciphertext goes to its owner and to enclaves only: nobody else
        holds even the encrypted weights. A proposal, open or not, opens nothing."""
        state, job = grant.room, grant.job
        check_digest(digest)
        # a version's bytes only as its own owner uploaded them in this room: a manifest
        # naming another's digest (read on a ledger) opens nothing
        uploaders = service.blobs.uploaders(room, digest)
        versions = [(d.owner, v.manifest) for d in state.datasets.values() for v in d.versions]
        named = [(owner, m) for owner, m in versions if m.sha256 == digest and owner in uploaders]
        if job is not None:
            released = {state.version(n, m).manifest.sha256 for n, m in job.released}
            if digest not in released:
                raise AuthorizationError("an enclave reads its own job's inputs only")
            if not named:
                raise NotFoundError("its owner has not uploaded that input in this room")
            return _stream(service.blobs, digest)
        if not named:
            raise NotFoundError("no registered dataset in this room has that digest")
        model_owners = {owner for owner, m in named if m.model is not None}
        if model_owners and grant.signer not in model_owners:
            raise AuthorizationError("a model's ciphertext goes only to its owner and to enclaves")
        return _stream(service.blobs, digest)


def _stream(store: BlobStore, digest: str) -> StreamingResponse:
    size = store.size(digest)
    stream: Iterator[bytes] = store.read(digest)
    return StreamingResponse(
        stream,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:",
        },
    )


JobId = Annotated[str, PathParam(pattern=JOB_ID, description="A job id.")]
_BLOB: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The ciphertext"}
}


def _job_routes(app: FastAPI, service: Service) -> None:
    def names(state: RoomState) -> dict[str, str]:
        return {fp: m.identity.name for fp, m in state.members.items()}

    def view(room: str, state: RoomState, job: Job) -> dict[str, Any]:
        """The ledger's view of a job, its place in this service's queue for the
        room (1: next; None when it is not waiting: running or finished), and its
        inputs deposited with a key broker that has since restarted (stale: their
        owners must re-deposit before the job can run)."""
        runner, position = service.runner, None
        if runner is not None and job.status == "requested":
            position = runner.position(room, job.id)
        stale = service.desk.stale(state, job)
        return {**job_view(job, names(state)), "queue_position": position, "stale": stale}

    @app.get("/v1/rooms/{room}/jobs")
    def jobs(room: RoomId, grant: Granted) -> list[dict[str, Any]]:
        state = grant.room
        return [view(room, state, j) for j in sorted(state.jobs.values(), key=_requested)]

    @app.get("/v1/rooms/{room}/key-requests")
    def key_requests(room: RoomId, _: Granted) -> list[dict[str, Any]]:
        """Key requests of jobs still waiting for an owner's release: each owner's
        key agent checks them itself and answers with key.release or key.deny."""
        return service.desk.requests(room)

    @app.get("/v1/rooms/{room}/jobs/{job}")
    def job(room: RoomId, job: JobId, grant: Granted) -> dict[str, Any]:
        state = grant.room
        return view(room, state, state.job(job))

    @app.get(
        "/v1/rooms/{room}/jobs/{job}/result", response_class=StreamingResponse, responses=_BLOB
    )
    def result(room: RoomId, job: JobId, grant: Granted) -> StreamingResponse:
        """A recipient's (the access rule checks it once the job has a result)."""
        found = grant.room.job(job)
        if found.status != "succeeded" or found.output is None:
            raise NotFoundError(f"job {job[:12]}... has no result ({found.status})")
        return _stream(service.results, found.output["sha256"])


BrokerNonce = Annotated[
    str,
    Query(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$", description="A nonce."),
]


def _enclave_routes(app: FastAPI, service: Service) -> None:
    @app.get("/v1/broker")
    def broker_offer(nonce: BrokerNonce, _: Granted) -> dict[str, Any]:
        """The attested key broker's identity, with fresh evidence binding it and
        ``nonce``: what an owner checks before sealing a data key to it."""
        broker = service.desk.broker
        if broker is None:
            raise NotFoundError("this service runs no key broker")
        return broker.offer(nonce)

    @app.post("/v1/rooms/{room}/jobs/{job}/challenge")
    def challenge(room: RoomId, job: JobId, payload: Challenge) -> dict[str, str]:
        """A fresh nonce for the enclave the job runner launched (its launch token)."""
        return {"nonce": service.desk.challenge(room, job, payload.launch_token)}

    @app.post("/v1/rooms/{room}/jobs/{job}/keys")
    def keys(room: RoomId, job: JobId, payload: KeyRequest) -> dict[str, Any]:
        """Evidence in: the request is checked, kept for the owners' key agents and
        passed to the attested key broker. Keys arrive on the ledger, sealed."""
        released = service.desk.release(
            room,
            job,
            token=payload.launch_token,
            nonce=payload.nonce,
            enclave=payload.enclave,
            evidence=payload.evidence,
        )
        service.trust_enclave(service.ledger.state(room).job(job))
        return released

    @app.post("/v1/rooms/{room}/jobs/{job}/key-status")
    def key_status(room: RoomId, job: JobId, payload: Challenge) -> dict[str, Any]:
        """Whether every input of the job has been released (by the broker and the
        owners' key agents), whose release is still due, and which inputs wait for
        a fresh deposit (their broker restarted)."""
        service.desk.check_launch(room, job, payload.launch_token)
        service.desk.poll(room, job)
        service.trust_enclave(service.ledger.state(room).job(job))
        return service.desk.status(room, job)

    @app.put("/v1/rooms/{room}/jobs/{job}/result/{digest}", status_code=201)
    async def put_result(
        room: RoomId, job: JobId, digest: Digest, request: Request, _: Granted
    ) -> dict[str, Any]:
        """The job's attested enclave, while the job runs (the access rule)."""
        check_digest(digest)
        if content_sha256(request.headers) != digest:
            raise AuthenticationError("Content-Digest does not name the blob being uploaded")
        try:
            size = int(request.headers.get("content-length", ""))
        except ValueError:
            raise DeserializationError("a result upload needs a Content-Length") from None
        if not 0 < size <= service.max_upload_bytes:
            raise IntegrityError(f"a result must be 1 to {service.max_upload_bytes} bytes")
        if not service.results.exists(digest):
            await service.results.put(digest, size, request.stream())
        return {"digest": digest, "bytes": size}

    @app.post("/v1/rooms/{room}/jobs/{job}/report", status_code=201)
    async def report(room: RoomId, job: JobId, request: Request, grant: Granted) -> dict[str, Any]:
        """The job's attested enclave, while the job runs (the access rule)."""
        who, body = grant.signer, await request.body()
        try:
            payload = Report.model_validate_json(body)
        except ValidationError as exc:
            raise DeserializationError('the body must be {"statement": <job.*>}') from exc
        statement = parse_statement(payload.statement)
        if statement.author != who or statement.kind not in ("job.complete", "job.fail"):
            raise AuthorizationError("an enclave reports its own job.complete or job.fail only")
        if statement.kind == "job.complete":
            output = statement.body.output
            # the ledger shows the size as a bucket: the blob must fall in it
            if not service.results.exists(output.sha256) or (
                bytes_bucket(service.results.size(output.sha256)) != output.bytes
            ):
                raise IntegrityError("upload the result before reporting it")
        (entry,) = service.ledger.submit(room, [payload.statement], with_receipts=True)
        return service.ledger.receipts(room, [entry])[0].to_json()


def _requested(job: Job) -> int:
    return job.requested_at


def _proposed_manifests(state: RoomState, owner: str) -> list[dict[str, Any]]:
    """The manifests ``owner`` proposed in the room (registered, or still open)."""
    found = []
    for proposal in state.proposals.values():
        action = proposal.action
        if action.type != "register_dataset" or proposal.status in ("rejected", "withdrawn"):
            continue
        if proposal.proposer == owner and isinstance(action.manifest.get("payload"), dict):
            found.append(action.manifest)
    return found


def _owned_manifest(state: RoomState, digest: str, owner: str) -> dict[str, Any] | None:
    """A manifest ``owner`` proposed in the room (registered, or open) with ``digest``:
    what lets it upload that ciphertext (never what lets anyone read it)."""
    for proposal in state.proposals.values():
        action = proposal.action
        if action.type != "register_dataset" or proposal.status in ("rejected", "withdrawn"):
            continue
        payload = action.manifest.get("payload", {})
        ciphertext = payload.get("ciphertext", {}) if isinstance(payload, dict) else {}
        if ciphertext.get("sha256") == digest and proposal.proposer == owner:
            manifest: dict[str, Any] = action.manifest
            return manifest
    return None
