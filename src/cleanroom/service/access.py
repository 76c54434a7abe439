"""Who may call which route: one table, enforced on every request.

Invariants:

* :data:`ROUTE_ACCESS` maps every (method, path template) the service serves
  to exactly one :class:`Access` kind. :func:`check_routes` runs when the app
  is built and refuses an app with a route the table does not list, an entry
  no route serves, or a route that does not run :func:`authorize`: a route
  added without deciding who may call it is never served (fail closed).
* :func:`authorize`, a dependency of every route, reads the route's kind from
  the table (never from the route), authenticates the caller as that kind
  requires and hands the route a :class:`Grant`. Routes then apply only rules
  about *what* (which blob, which entry, which statement kinds), never *who*.
* Refusals are fixed: 401 for an unsigned, badly signed, stale or replayed
  request (:mod:`cleanroom.service.auth`), 403 with the texts below otherwise.
  A stranger, a party that declined and a removed member get the same 403
  whether or not the room exists, so room ids leak nothing.
* ``/metrics`` is the operator's (:attr:`Access.OPERATOR`): a bearer token from
  the settings, compared in constant time; without one configured it is a 404
  for everyone. Its counts say how busy each route is, which strangers need
  not learn; it never names a room unless the operator asks for that.

The decision itself (:func:`decide`) is pure: a kind, the room's verified
state and the caller's fingerprint in, a grant out or an error raised.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Route

from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    DeserializationError,
    GovernanceError,
    NotFoundError,
)
from cleanroom.governance.model import Job
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import RoomCreate, Statement, parse_statement
from cleanroom.identities.identity import PublicIdentity
from cleanroom.service.auth import require_signed

if TYPE_CHECKING:
    from cleanroom.ledger.log import Ledger
    from cleanroom.service.app import Service

ROOM_ID = r"^[0-9a-f]{32}$"
JOB_ID = r"^[0-9a-f]{64}$"


class Access(StrEnum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone: no signature
    OPERATOR = "operator"  # no signature: the operator's metrics bearer token
    CREATOR = "creator"  # signed by the author of the room.create statement in the body
    LAUNCHED = "launched"  # no signature: the job's launch token (in the body) proves the
    #                        enclave the job runner launched for it
    SIGNED = "signed"  # any key the service knows (a party of some room, an enclave)
    MEMBER = "member"  # an invited or active member of the room
    HISTORY = "history"  # a member, or a removed member (its history up to its removal)
    HISTORY_OR_ENCLAVE = "history-or-enclave"  # HISTORY, or a running job's attested enclave
    MEMBER_OR_ENCLAVE = "member-or-enclave"  # MEMBER, or a running job's attested enclave
    RECIPIENT = "recipient"  # a member; once the job has a result, one of its recipients
    JOB_ENCLAVE = "job-enclave"  # the attested enclave of this very job, while it runs

    @property
    def who(self) -> str:
        """In words, for the route listing (:data:`cleanroom.service.app.ROUTES`)."""
        return _WHO[self]


_WHO = {
    Access.PUBLIC: "anyone",
    Access.OPERATOR: "the operator (its metrics bearer token)",
    Access.CREATOR: "signed by the creator named in the room.create statement",
    Access.LAUNCHED: "the enclave launched for the job",
    Access.SIGNED: "signed by a known party",
    Access.MEMBER: "member",
    Access.HISTORY: "member or removed member (a removed member: up to its removal)",
    Access.HISTORY_OR_ENCLAVE: "member, removed member (up to its removal), or a running "
    "job's enclave",
    Access.MEMBER_OR_ENCLAVE: "member, or the enclave of a running job",
    Access.RECIPIENT: "a recipient of the job's result",
    Access.JOB_ENCLAVE: "the job's attested enclave, while the job runs",
}

_ROOM = "/v1/rooms/{room}"
_JOB = f"{_ROOM}/jobs/{{job}}"

ROUTE_ACCESS: Mapping[tuple[str, str], Access] = MappingProxyType(
    {
        ("GET", "/v1/health"): Access.PUBLIC,
        ("GET", "/v1/service"): Access.PUBLIC,
        ("GET", "/openapi.json"): Access.PUBLIC,
        ("GET", "/docs"): Access.PUBLIC,  # the reference page: what /openapi.json says
        # request counts, latencies and ledger totals: the operator's, not a stranger's
        ("GET", "/metrics"): Access.OPERATOR,
        ("POST", "/v1/rooms"): Access.CREATOR,
        ("GET", "/v1/rooms"): Access.SIGNED,
        ("GET", "/v1/broker"): Access.SIGNED,
        ("GET", _ROOM): Access.MEMBER,
        ("GET", f"{_ROOM}/proposals"): Access.MEMBER,
        # a removed member: consent.revoke for its own data only (the route's rule)
        ("POST", f"{_ROOM}/statements"): Access.HISTORY,
        ("GET", f"{_ROOM}/entries"): Access.HISTORY,
        ("GET", f"{_ROOM}/tree-head"): Access.HISTORY,
        ("GET", f"{_ROOM}/receipts/{{seq}}"): Access.HISTORY,
        ("GET", f"{_ROOM}/consistency"): Access.HISTORY,
        ("GET", f"{_ROOM}/export"): Access.HISTORY_OR_ENCLAVE,
        # only ciphertext named by a manifest the caller proposed (the route's rule)
        ("PUT", f"{_ROOM}/blobs/{{digest}}"): Access.MEMBER,
        # members: registered datasets; an enclave: its job's released inputs
        ("GET", f"{_ROOM}/blobs/{{digest}}"): Access.MEMBER_OR_ENCLAVE,
        ("GET", f"{_ROOM}/jobs"): Access.MEMBER,
        ("GET", _JOB): Access.MEMBER,
        ("GET", f"{_ROOM}/key-requests"): Access.MEMBER,
        ("POST", f"{_JOB}/challenge"): Access.LAUNCHED,
        ("POST", f"{_JOB}/keys"): Access.LAUNCHED,
        ("POST", f"{_JOB}/key-status"): Access.LAUNCHED,
        ("PUT", f"{_JOB}/result/{{digest}}"): Access.JOB_ENCLAVE,
        ("POST", f"{_JOB}/report"): Access.JOB_ENCLAVE,
        ("GET", f"{_JOB}/result"): Access.RECIPIENT,
    }
)

# routes whose body streams to the handler: the signature is checked over the
# headers before a byte is read; the handler checks the body as it arrives
STREAMED: frozenset[tuple[str, str]] = frozenset(
    {("PUT", f"{_ROOM}/blobs/{{digest}}"), ("PUT", f"{_JOB}/result/{{digest}}")}
)

NOT_A_MEMBER = "you are not a member of this room"
NO_METRICS = "this service serves no metrics (its operator has set no metrics_token)"
NOT_THE_OPERATOR = "the metrics need the operator's bearer token"
NOT_A_RECIPIENT = "only the job's result recipients may fetch its result"
NOT_THE_CREATOR = "a room is created by the author of its room.create statement"
NOT_THE_JOB_ENCLAVE: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("PUT", f"{_JOB}/result/{{digest}}"): "only the job's attested enclave uploads its result",
        ("POST", f"{_JOB}/report"): "only the job's attested enclave reports its outcome",
    }
)


@dataclass(frozen=True)
class Grant:
    """What :func:`authorize` established: the caller (None where no signature is
    needed), the room's state it was decided on, how many entries a removed member
    reads (None: all), the running job of an enclave caller or the job a recipient
    asked for, and the room.create statement of a room's creator."""

    access: Access
    who: str | None = None
    state: RoomState | None = None
    readable: int | None = None
    job: Job | None = None
    creation: tuple[str, Statement] | None = None

    @property
    def signer(self) -> str:
        if self.who is None:
            raise RuntimeError(f"a {self.access} route has no signer")
        return self.who

    @property
    def room(self) -> RoomState:
        if self.state is None:
            raise RuntimeError(f"a {self.access} route has no room")
        return self.state


def decide(
    access: Access,
    state: RoomState | None,
    who: str,
    *,
    job: str | None = None,
    refusal: str = NOT_A_MEMBER,
) -> Grant:
    """The grant of ``who`` for a room route of kind ``access`` in the room whose
    verified state is ``state`` (None: no such room, or not served), or raise
    :class:`AuthorizationError` (``refusal`` for a JOB_ENCLAVE route)."""
    if access in (Access.PUBLIC, Access.OPERATOR, Access.CREATOR, Access.LAUNCHED, Access.SIGNED):
        raise TypeError(f"{access} routes are not decided on a room")
    # (1) an enclave signs with its attested key, and only while its job runs
    #     (threat model: (h) its own job's enclave; (i) another job's, a finished job's)
    if access in (Access.HISTORY_OR_ENCLAVE, Access.MEMBER_OR_ENCLAVE, Access.JOB_ENCLAVE):
        running = state.enclave_job(who) if state is not None else None
        if running is not None and running.status != "running":
            running = None
        if running is not None and (access is not Access.JOB_ENCLAVE or running.id == job):
            return Grant(access, who, state, job=running)
        if access is Access.JOB_ENCLAVE:
            raise AuthorizationError(refusal)
    member = state.members.get(who) if state is not None else None
    status = member.status if member is not None else None
    # (2) a removed member reads the history up to and including its removal
    reads_history = access in (Access.HISTORY, Access.HISTORY_OR_ENCLAVE)
    if member is not None and status == "removed" and reads_history:
        return Grant(access, who, state, readable=member.removed_at + 1)
    # (3) every other kind needs a member, invited or active: never a stranger, a
    #     party that declined or a removed member; the same answer if no such room
    if state is None or status not in ("invited", "active"):
        raise AuthorizationError(NOT_A_MEMBER)
    if access is not Access.RECIPIENT:
        return Grant(access, who, state)
    # (4) a job's result goes to its recipients (members see every job: an unknown
    #     job is a 404, and a job without a result yet is one at the route)
    found = state.job(job or "")
    if found.status == "succeeded" and found.output is not None and who not in found.sealed_keys:
        raise AuthorizationError(NOT_A_RECIPIENT)
    return Grant(access, who, state, job=found)


async def authorize(request: Request) -> Grant:
    """The dependency every route runs: the route's kind from the table, then the
    caller authenticated and authorized as that kind requires."""
    service: Service = request.app.state.service
    key = _route_key(request)
    access = ROUTE_ACCESS.get(key)
    if access is None:  # check_routes makes this unreachable; fail closed regardless
        raise RuntimeError(f"no access rule for {key}")
    if access is Access.PUBLIC:
        return Grant(access)
    if access is Access.OPERATOR:
        _operator(service.metrics_token, request.headers.get("authorization"))
        return Grant(access)
    if access is Access.CREATOR:
        return await _creator(service, request)
    if access is Access.LAUNCHED:
        launched = _path_id(request, "room", ROOM_ID), _path_id(request, "job", JOB_ID)
        service.desk.check_launch(*launched, _launch_token(await request.body()))
        return Grant(access)
    if key in STREAMED:  # the body is checked against the signature as it streams in
        who = service.authenticate(request, None)
    else:
        who = (await service.signed_body(request))[0]
    if access is Access.SIGNED:
        return Grant(access, who)
    room = _path_id(request, "room", ROOM_ID)
    job = _path_id(request, "job", JOB_ID) if "job" in request.path_params else None
    refusal = NOT_THE_JOB_ENCLAVE.get(key, NOT_A_MEMBER)
    # folding a room's state is ledger work: off the event loop
    return await run_in_threadpool(
        _decide_on, service.ledger, access, room, who, job=job, refusal=refusal
    )


def _operator(token: str | None, authorization: str | None) -> None:
    """The operator's bearer token, compared in constant time; no token set: no
    metrics at all (404, whoever asks)."""
    if token is None:
        raise NotFoundError(NO_METRICS)
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise AuthenticationError(NOT_THE_OPERATOR)


def _decide_on(
    ledger: Ledger, access: Access, room: str, who: str, *, job: str | None, refusal: str
) -> Grant:
    try:
        state: RoomState | None = ledger.state(room)
    except GovernanceError:  # no such room, or quarantined: the same 403 as a stranger's
        state = None
    return decide(access, state, who, job=job, refusal=refusal)


def _route_key(request: Request) -> tuple[str, str]:
    route = request.scope.get("route")
    path = route.path if isinstance(route, Route) else ""
    return ("GET" if request.method == "HEAD" else request.method, path)


_IDS: dict[str, TypeAdapter[str]] = {
    pattern: TypeAdapter(Annotated[str, StringConstraints(pattern=pattern)])
    for pattern in (ROOM_ID, JOB_ID)
}


def _path_id(request: Request, name: str, pattern: str) -> str:
    """A path parameter validated as the route declares it, before any lookup (the
    same 422 the route's own validation would give)."""
    try:
        return _IDS[pattern].validate_python(request.path_params.get(name))
    except ValidationError as exc:
        raise RequestValidationError(_errors(exc, ("path", name))) from exc


def _errors(exc: ValidationError, where: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {**e, "loc": (*where, *e.get("loc", ()))}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


class _LaunchToken(BaseModel):
    model_config = ConfigDict(extra="allow")  # the route's own model checks the rest
    launch_token: str = Field(min_length=16, max_length=128)


def _launch_token(body: bytes) -> str:
    try:
        return _LaunchToken.model_validate_json(body).launch_token
    except ValidationError as exc:
        raise RequestValidationError(_errors(exc, ("body",))) from exc


class CreateRoom(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statement: str = Field(min_length=10, max_length=1 << 22)


async def _creator(service: Service, request: Request) -> Grant:
    """A room's creator: a party the service may not know yet, so its key comes
    from the room.create statement's member list, and it must be that statement's
    author (the operator's admission and rate limit are the route's)."""
    require_signed(request.headers)
    body = await request.body()
    try:
        payload = CreateRoom.model_validate_json(body)
    except ValidationError as exc:
        raise DeserializationError('the body must be {"statement": <room.create>}') from exc
    statement = parse_statement(payload.statement)
    if not isinstance(statement.body, RoomCreate):
        raise GovernanceError("POST /v1/rooms takes a room.create statement")
    candidates = {}
    for member in statement.body.members:
        try:
            identity = PublicIdentity.from_document(member.identity)
        except CleanroomError:
            continue
        candidates[identity.fingerprint] = identity.signing_key
    signer = service.authenticate(request, body, candidates)
    if signer != statement.author:
        raise AuthorizationError(NOT_THE_CREATOR)
    return Grant(Access.CREATOR, signer, creation=(payload.statement, statement))


def check_routes(routes: Iterable[BaseRoute]) -> None:
    """Refuse (RuntimeError) routes the table does not list exactly, and routes
    that would be served without :func:`authorize`."""
    served: set[tuple[str, str]] = set()
    for route in routes:
        if not isinstance(route, Route):
            raise TypeError(f"a route of unknown kind cannot be authorized: {route!r}")
        for method in route.methods or ():
            key = ("GET" if method == "HEAD" else method, route.path)
            served.add(key)
            access = ROUTE_ACCESS.get(key)
            if access is None:
                raise RuntimeError(f"{method} {route.path} has no entry in the access table")
            if isinstance(route, APIRoute):
                if not any(d.call is authorize for d in route.dependant.dependencies):
                    raise RuntimeError(f"{method} {route.path} does not run authorize")
            elif access is not Access.PUBLIC:  # no dependency runs for a plain route
                raise RuntimeError(f"{method} {route.path} is not a route authorize can guard")
    extra = sorted(set(ROUTE_ACCESS) - served)
    if extra:
        raise RuntimeError(f"the access table lists routes nobody serves: {extra}")
    if not served >= STREAMED:
        raise RuntimeError("a streamed route is not served")
