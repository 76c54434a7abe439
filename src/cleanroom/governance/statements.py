"""Signed statements: every act in a room, by a member, the ledger service
(key releases, denials, failed jobs) or a job's attested enclave (its result).

A statement is a compact JWS (``typ: cleanroom-statement+jws``) signed by its
author, over the RFC 8785 form of::

    {"room": <room id>, "kind": <kind>, "author": <fingerprint>,
     "nonce": <16 random bytes>, "created_at": <ms>, "body": {...}}

The room id binds a statement to one room; the nonce makes every statement
unique, so the ledger can refuse a replayed one by its digest (SHA-256 of the
token). Bodies are parsed here, at the edge, into typed models; the state
machine in :mod:`cleanroom.governance.state` decides whether they are allowed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from cleanroom.attestation.terms import AttestationPolicy
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import b64url_encode, parse_json
from cleanroom.errors import DeserializationError, IntegrityError
from cleanroom.governance.outcomes import (
    BYTES_BUCKET,
    ROWS_BUCKET,
    TIME_BUCKET_MS,
    FailureCategory,
    require_bucket,
)
from cleanroom.identities.keystore import Party
from cleanroom.policy.rules import DpSpec, Rule
from cleanroom.wire import WireModel, parse_model

STATEMENT_TYP = "cleanroom-statement+jws"
Role = Literal["data_provider", "analyst", "result_recipient", "observer"]
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RoomId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")]
Platform = Literal["sev-snp", "tdx", "sgx", "insecure-virtual"]
VIRTUAL_PREFIX = "insecure-virtual:"
MeasurementValue = Annotated[str, Field(pattern=r"^(insecure-virtual:)?[0-9a-f]{64,128}$")]
Reason = Annotated[str, Field(min_length=1, max_length=2000)]
# what job.complete publishes about a run: buckets only (see cleanroom.governance.outcomes)
Milliseconds = Annotated[StrictInt, AfterValidator(require_bucket(TIME_BUCKET_MS))]
PhaseName = Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,46}_ms$")]


class ConstitutionBody(WireModel):
    rule: Literal["default", "unanimity", "majority", "threshold"] = "default"
    k: StrictInt | None = Field(default=None, ge=1)
    proposal_ttl_hours: StrictInt = Field(default=168, ge=1, le=24 * 365)


class MemberBody(WireModel):
    identity: dict[str, Any]
    roles: list[Role] = Field(min_length=1, max_length=4)


class RoomCreate(WireModel):
    name: Name
    constitution: ConstitutionBody
    members: list[MemberBody] = Field(min_length=1, max_length=200)


class MemberAccept(WireModel):
    invitation: Digest


class MemberDecline(WireModel):
    """An invited party turns its invitation down: it never becomes a member."""

    invitation: Digest


# -- proposal actions ------------------------------------------------------------


class AddMember(WireModel):
    type: Literal["add_member"]
    identity: dict[str, Any]
    roles: list[Role] = Field(min_length=1, max_length=4)


class RemoveMember(WireModel):
    type: Literal["remove_member"]
    member: Digest


class RegisterDataset(WireModel):
    type: Literal["register_dataset"]
    manifest: dict[str, Any]
    rule: Rule | None = None  # the analysis rule; none: only analyses its owner approves


class SetAnalysisRule(WireModel):
    type: Literal["set_analysis_rule"]
    dataset: Name
    rule: Rule


class AddAnalysis(WireModel):
    type: Literal["add_analysis"]
    name: Name
    # each with its own check in cleanroom.policy
    language: Literal["sql", "score", "python", "train"]
    text: StrictStr = Field(min_length=1, max_length=100_000)
    inputs: list[Name] = Field(min_length=1, max_length=32)
    recipients: list[Digest] = Field(min_length=1, max_length=32)
    dp: DpSpec | None = None  # a differentially private release, charged to budgets


class RetireAnalysis(WireModel):
    type: Literal["retire_analysis"]
    name: Name


class Measurement(WireModel):
    platform: Platform
    value: MeasurementValue

    @model_validator(mode="after")
    def _prefixed_iff_virtual(self) -> Measurement:
        # a virtual measurement carries its prefix, so it is never mistaken for hardware's
        if (self.platform == "insecure-virtual") != self.value.startswith(VIRTUAL_PREFIX):
            raise ValueError(
                f"an insecure-virtual measurement starts with {VIRTUAL_PREFIX!r}; "
                "no other platform's does"
            )
        return self


class AttestationTerms(WireModel):
    """Terms of the contract besides the measurement (see
    :class:`cleanroom.attestation.terms.AttestationPolicy`): exact host data (SEV-SNP
    HOST_DATA, e.g. the hash of a confidential container's policy), the least
    SVN of each SEV-SNP TCB component, the exact VMPL, the least report version,
    the exact TDX MRCONFIGID and RTMRs (by index, as strings "0" to "3")."""

    host_data: StrictStr | None = Field(default=None, max_length=128)
    min_tcb: dict[StrictStr, StrictInt] | None = Field(default=None, max_length=5)
    vmpl: StrictInt | None = None
    min_report_version: StrictInt | None = None
    mrconfigid: StrictStr | None = Field(default=None, max_length=96)
    rtmrs: dict[Literal["0", "1", "2", "3"], StrictStr] | None = None

    def policy(self) -> AttestationPolicy:
        return AttestationPolicy(
            host_data=self.host_data,
            min_tcb=self.min_tcb,
            vmpl=self.vmpl,
            min_report_version=self.min_report_version,
            mrconfigid=self.mrconfigid,
            rtmrs={int(k): v for k, v in self.rtmrs.items()} if self.rtmrs is not None else None,
        )

    @model_validator(mode="after")
    def _valid(self) -> AttestationTerms:
        self.policy()  # its own checks: known components, sizes, ranges, at least one term
        return self


class SetMeasurements(WireModel):
    """The runtime code the room trusts, with the contract's other attestation
    terms. Insecure virtual measurements (no hardware protection) are refused
    unless ``allow_insecure_virtual`` says so explicitly."""

    type: Literal["set_measurements"]
    measurements: list[Measurement] = Field(max_length=64)
    allow_insecure_virtual: StrictBool = False
    terms: AttestationTerms | None = None

    @model_validator(mode="after")
    def _virtual_needs_consent(self) -> SetMeasurements:
        virtual = any(m.platform == "insecure-virtual" for m in self.measurements)
        if virtual and not self.allow_insecure_virtual:
            raise ValueError(
                "insecure-virtual measurements give no hardware protection: "
                "set allow_insecure_virtual to approve them explicitly"
            )
        return self


class SetPrivacyBudget(WireModel):
    type: Literal["set_privacy_budget"]
    dataset: Name
    epsilon: StrictFloat | StrictInt = Field(gt=0, le=100)
    delta: StrictFloat | StrictInt = Field(default=0.0, ge=0, lt=1)


class SetLimits(WireModel):
    """The room's resource limits per job (each service may be stricter), and its
    caps on scoring over the room's life (against model extraction by probing:
    every scoring job counts, and every row of the records it scores, at request)."""

    type: Literal["set_limits"]
    time_s: StrictInt = Field(ge=1, le=24 * 3600)
    memory_mb: StrictInt = Field(ge=64, le=1 << 20)
    max_result_rows: StrictInt = Field(ge=1, le=100_000_000)
    max_scoring_jobs: StrictInt | None = Field(default=None, ge=0, le=1_000_000_000)
    max_scored_rows: StrictInt | None = Field(default=None, ge=0, le=1 << 50)


class ChangeConstitution(WireModel):
    type: Literal["change_constitution"]
    constitution: ConstitutionBody


class RestoreConsent(WireModel):
    type: Literal["restore_consent"]
    dataset: Name


Action = Annotated[
    AddMember
    | RemoveMember
    | RegisterDataset
    | AddAnalysis
    | RetireAnalysis
    | SetMeasurements
    | SetPrivacyBudget
    | SetAnalysisRule
    | SetLimits
    | ChangeConstitution
    | RestoreConsent,
    Field(discriminator="type"),
]


class ProposalCreate(WireModel):
    action: Action


class Ballot(WireModel):
    proposal: Digest
    vote: Literal["approve", "reject"]


class ProposalWithdraw(WireModel):
    proposal: Digest


class ConsentRevoke(WireModel):
    dataset: Name


# -- key release and jobs ------------------------------------------------------------


class ReleasePolicy(WireModel):
    """A data owner's own limits on key release, on top of the room's contract."""

    platforms: list[Platform] = Field(min_length=1, max_length=4)
    measurements: list[MeasurementValue] | None = Field(default=None, max_length=64)


class BrokerOffer(WireModel):
    """An attested key broker as a depositor saw it: its public identity and
    evidence whose report data binds that identity and the depositor's nonce."""

    identity: dict[str, Any]
    nonce: StrictStr = Field(min_length=16, max_length=128)
    evidence: dict[str, Any]


class KeyDeposit(WireModel):
    """How one version of a dataset's data key is released, with the owner's policy.

    ``release: "owner"`` (the default for new datasets): the key stays on the
    owner's machine and the owner's key agent signs each release itself; no
    key is deposited. ``release: "broker"``: the key is HPKE-sealed
    (``sealed_key``) to one attested key broker (``broker``: its identity and
    the evidence the depositor checked), which releases it on the owner's
    behalf; no other key opens it."""

    dataset: Name
    manifest: Digest  # canonical digest of the signed manifest
    release: Literal["owner", "broker"] = "broker"
    sealed_key: StrictStr | None = Field(default=None, min_length=40, max_length=200)
    broker: BrokerOffer | None = None
    policy: ReleasePolicy

    @model_validator(mode="after")
    def _mode(self) -> KeyDeposit:
        broker = self.release == "broker"
        if broker != (self.sealed_key is not None) or broker != (self.broker is not None):
            raise ValueError(
                "a broker deposit carries the key sealed to an attested broker and that "
                "broker's evidence; an owner deposit carries neither"
            )
        return self


class JobRequest(WireModel):
    """Run an accepted analysis; the statement's digest is the job id."""

    analysis: Name
    digest: Digest  # SHA-256 of the analysis text the requester expects


class ReleasedInput(WireModel):
    dataset: Name
    manifest: Digest


class SealedInputKey(WireModel):
    """A data key HPKE-sealed to the enclave's ephemeral key, bound to room, job,
    dataset and manifest: only that enclave can open it."""

    dataset: Name
    manifest: Digest
    sealed: StrictStr = Field(min_length=40, max_length=200)


class KeyRelease(WireModel):
    """Recorded before any key goes to an enclave, by the key broker (for the
    inputs deposited with it) or by a data owner (for its own inputs)."""

    job: Digest
    enclave: dict[str, Any]  # the enclave's ephemeral identity document
    nonce: StrictStr = Field(min_length=43, max_length=43)
    evidence: dict[str, Any]
    inputs: list[ReleasedInput] = Field(min_length=1, max_length=32)
    sealed_keys: list[SealedInputKey] | None = Field(default=None, max_length=32)


class KeyDeny(WireModel):
    job: Digest
    reason: Reason


class OutputColumn(WireModel):
    name: StrictStr = Field(min_length=1, max_length=256)
    type: StrictStr = Field(min_length=1, max_length=256)


class JobOutput(WireModel):
    """The sealed result: its exact ciphertext digest, and its size and row count
    as buckets (an upper bound each)."""

    sha256: Digest
    bytes: Annotated[StrictInt, AfterValidator(require_bucket(BYTES_BUCKET))]
    rows: Annotated[StrictInt, AfterValidator(require_bucket(ROWS_BUCKET))]
    columns: list[OutputColumn] = Field(min_length=1, max_length=4096)
    key_id: StrictStr = Field(min_length=1, max_length=64)


class Confinement(WireModel):
    """What held around a job's code in the confined child (ADR 0022): fixed fields."""

    landlock_abi: StrictInt | None = Field(ge=1, le=64)
    seccomp: StrictBool
    uid_dropped: StrictBool
    no_new_privs: StrictBool
    rlimits: StrictBool
    dac_read_bypass: StrictBool  # the sandbox user kept CAP_DAC_READ_SEARCH (Landlock fences)


class SealedResultKey(WireModel):
    recipient: Digest
    sealed: StrictStr = Field(min_length=40, max_length=200)


class InputDigest(WireModel):
    dataset: Name
    sha256: Digest


class JobComplete(WireModel):
    """Signed by the enclave's attested ephemeral key: what it ran and produced."""

    job: Digest
    output: JobOutput
    sealed_keys: list[SealedResultKey] = Field(min_length=1, max_length=32)
    inputs: list[InputDigest] = Field(min_length=1, max_length=32)
    duration_ms: Milliseconds
    phases: dict[PhaseName, Milliseconds] = Field(default_factory=dict, max_length=32)
    confinement: Confinement | None = None  # a Python job's: what held around its code


class JobFail(WireModel):
    """A job ended without a result. The reason is a category from a fixed set,
    never an error's text (which may quote data)."""

    job: Digest
    reason: FailureCategory


BODIES: dict[str, type[WireModel]] = {
    "room.create": RoomCreate,
    "member.accept": MemberAccept,
    "member.decline": MemberDecline,
    "proposal.create": ProposalCreate,
    "ballot": Ballot,
    "proposal.withdraw": ProposalWithdraw,
    "consent.revoke": ConsentRevoke,
    "key.deposit": KeyDeposit,
    "job.request": JobRequest,
    "key.release": KeyRelease,
    "key.deny": KeyDeny,
    "job.complete": JobComplete,
    "job.fail": JobFail,
}
Kind = Literal[
    "room.create",
    "member.accept",
    "member.decline",
    "proposal.create",
    "ballot",
    "proposal.withdraw",
    "consent.revoke",
    "key.deposit",
    "job.request",
    "key.release",
    "key.deny",
    "job.complete",
    "job.fail",
]


class _Payload(WireModel):
    room: RoomId
    kind: Kind
    author: Digest
    nonce: StrictStr = Field(min_length=22, max_length=22)
    created_at: StrictInt = Field(ge=0)
    body: dict[str, Any]


@dataclass(frozen=True)
class Statement:
    """A parsed statement. Its signature is checked by the state machine,
    which knows the author's key."""

    token: str
    digest: str
    room: str
    kind: str
    author: str
    created_at: int
    body: Any
    parsed: jws.ParsedToken

    def __repr__(self) -> str:
        return f"Statement({self.kind}, author={self.author[:12]}..., digest={self.digest[:12]}...)"


def statement_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def parse_statement(token: str) -> Statement:
    """Parse a statement's structure and body; raises, never checks the signature."""
    parsed = jws.parse(token, typ=STATEMENT_TYP)
    try:
        raw = parse_json(parsed.payload, what="statement")
    except DeserializationError as exc:
        raise IntegrityError(f"malformed statement: {exc}") from exc
    payload = parse_model(_Payload, raw, what="statement")
    if payload.author != parsed.kid:
        raise IntegrityError("statement author does not match its signing key id")
    body = parse_model(BODIES[payload.kind], payload.body, what=f"{payload.kind} statement")
    return Statement(
        token=token,
        digest=statement_digest(token),
        room=payload.room,
        kind=payload.kind,
        author=payload.author,
        created_at=payload.created_at,
        body=body,
        parsed=parsed,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def sign_statement(
    party: Party,
    room: str,
    kind: str,
    body: dict[str, Any],
    *,
    now: Callable[[], int] = _now_ms,
    rng: Callable[[int], bytes] = os.urandom,
) -> str:
    """Sign a statement as ``party``. The body is validated before signing."""
    if kind not in BODIES:
        raise ValueError(f"unknown statement kind {kind!r}")
    parse_model(BODIES[kind], body, what=f"{kind} statement")
    payload = {
        "room": room,
        "kind": kind,
        "author": party.fingerprint,
        "nonce": b64url_encode(rng(16)),
        "created_at": now(),
        "body": body,
    }
    return jws.sign(
        canonical_json(payload), party.signing_private, kid=party.fingerprint, typ=STATEMENT_TYP
    )


__all__ = [
    "Action",
    "Ballot",
    "ConstitutionBody",
    "Statement",
    "parse_statement",
    "sign_statement",
    "statement_digest",
]


# -- recipes: one function per act, for the SDK and the CLI ------------------------------

Clock = Callable[[], int]


def new_room_id(rng: Callable[[int], bytes] = os.urandom) -> str:
    return rng(16).hex()


def room_create(
    party: Party,
    room: str,
    *,
    name: str,
    members: list[tuple[dict[str, Any], list[str]]],
    constitution: dict[str, Any] | None = None,
    now: Clock = _now_ms,
) -> str:
    """``members``: (identity document, roles) pairs, the creator included."""
    body = {
        "name": name,
        "constitution": constitution or {"rule": "default"},
        "members": [{"identity": identity, "roles": roles} for identity, roles in members],
    }
    return sign_statement(party, room, "room.create", body, now=now)


def member_accept(party: Party, room: str, invitation: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "member.accept", {"invitation": invitation}, now=now)


def member_decline(party: Party, room: str, invitation: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "member.decline", {"invitation": invitation}, now=now)


def propose(party: Party, room: str, action: dict[str, Any], *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "proposal.create", {"action": action}, now=now)


def vote(party: Party, room: str, proposal: str, *, approve: bool, now: Clock = _now_ms) -> str:
    body = {"proposal": proposal, "vote": "approve" if approve else "reject"}
    return sign_statement(party, room, "ballot", body, now=now)


def withdraw(party: Party, room: str, proposal: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "proposal.withdraw", {"proposal": proposal}, now=now)


def revoke_consent(party: Party, room: str, dataset: str, *, now: Clock = _now_ms) -> str:
    return sign_statement(party, room, "consent.revoke", {"dataset": dataset}, now=now)


def request_job(
    party: Party, room: str, analysis: str, digest: str, *, now: Clock = _now_ms
) -> str:
    body = {"analysis": analysis, "digest": digest}
    return sign_statement(party, room, "job.request", body, now=now)
