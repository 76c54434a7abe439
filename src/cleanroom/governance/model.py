"""The room's derived state: its records and the lookups every rule shares (pure).

Statuses are closed enumerations (:class:`MemberStatus`, :class:`JobStatus`...):
a state outside them cannot be written. Nothing here changes the state on its
own; the transitions live in :mod:`cleanroom.governance.membership`,
:mod:`~cleanroom.governance.proposals`, :mod:`~cleanroom.governance.datasets` and
:mod:`~cleanroom.governance.jobs`, joined and dispatched by
:mod:`cleanroom.governance.state`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cleanroom.attestation import Policy
from cleanroom.attestation.claims import Claims
from cleanroom.crypto import jws
from cleanroom.datasets.manifest import Manifest
from cleanroom.errors import CleanroomError, GovernanceError
from cleanroom.governance.constitution import Constitution
from cleanroom.governance.statements import (
    AddMember,
    AttestationTerms,
    MemberBody,
    SetLimits,
    Statement,
)
from cleanroom.identities.identity import PublicIdentity
from cleanroom.policy.memo import CheckMemo
from cleanroom.policy.rules import DpSpec, Rule


class RoomStatus(StrEnum):
    PENDING = "pending"  # members listed at creation have not all accepted
    ACTIVE = "active"
    DECLINED = "declined"  # an invitee of a room being formed declined: final


class MemberStatus(StrEnum):
    INVITED = "invited"
    ACTIVE = "active"
    DECLINED = "declined"  # final
    REMOVED = "removed"


class ProposalStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class AnalysisStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


class JobStatus(StrEnum):
    REQUESTED = "requested"  # waiting for its inputs' keys
    RUNNING = "running"  # every key released to its attested enclave
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Member:
    identity: PublicIdentity
    roles: frozenset[str]
    status: MemberStatus
    invitation: str  # digest of the statement the member must accept
    removed_at: int = -1  # the position of the entry that removed it (-1: not removed)
    withdrawn: set[str] = field(default_factory=set)  # datasets it revoked once removed

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def votes(self) -> bool:
        return self.status == MemberStatus.ACTIVE and bool(self.roles - {"observer"})


@dataclass
class DatasetVersion:
    version: int
    manifest: Manifest
    digest: str


@dataclass
class Dataset:
    name: str
    owner: str
    versions: list[DatasetVersion]
    consent: bool = True
    budget: tuple[float, float] | None = None
    spent: float = 0.0  # epsilon charged by key releases of DP analyses
    rule: Rule | None = None

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget[0] - self.spent) if self.budget else 0.0


@dataclass
class Analysis:
    name: str
    language: str
    text: str
    digest: str
    inputs: tuple[str, ...]
    recipients: tuple[str, ...]
    status: AnalysisStatus = AnalysisStatus.ACTIVE
    dp: DpSpec | None = None
    approved_by: frozenset[str] = frozenset()
    version: int = 1  # a revision under the same name is the next version
    superseded: tuple[str, ...] = ()  # the digests of its earlier versions, oldest first


@dataclass
class Deposit:
    dataset: str
    manifest: str
    owner: str
    sealed_key: str | None  # None: the owner's key agent releases the key itself
    platforms: frozenset[str]
    measurements: frozenset[str] | None
    broker: PublicIdentity | None = None  # the attested broker the key is sealed to
    broker_claims: Claims | None = None  # its attestation, re-appraised at each release

    @property
    def release(self) -> str:
        return "owner" if self.sealed_key is None else "broker"


class KeyRequestError(GovernanceError):
    """A key request that is malformed, stale, replayed or bound to another enclave:
    wrong in itself, whatever the room's rules say (an owner's agent ignores it
    rather than denying the job, since anyone can forge one)."""


@dataclass
class Job:
    id: str
    analysis: str
    analysis_digest: str
    requester: str
    requested_at: int
    inputs: tuple[str, ...]
    recipients: tuple[str, ...]
    status: JobStatus = JobStatus.REQUESTED
    enclave: PublicIdentity | None = None
    platform: str = ""
    measurement: str = ""
    assurance: str = ""
    released: tuple[tuple[str, str], ...] = ()  # (dataset, manifest digest)
    nonce: str = ""  # the key request's nonce, fixed by the job's first release
    expected: tuple[tuple[str, str], ...] = ()  # its inputs, fixed by the first release too
    counted: tuple[tuple[str, str], ...] = ()  # a scoring job's inputs, as charged to the caps
    input_keys: dict[str, str] = field(default_factory=dict)  # manifest -> key sealed to enclave
    waiting_for: tuple[str, ...] = ()  # owners (fingerprints) whose release is still due
    output: dict[str, Any] | None = None
    sealed_keys: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    finished_at: int = 0


@dataclass
class Proposal:
    id: str
    proposer: str
    action: Any
    approvers: frozenset[str]
    expires_at: int
    opened_at: int
    status: ProposalStatus = ProposalStatus.OPEN
    approvals: set[str] = field(default_factory=set)
    rejections: set[str] = field(default_factory=set)
    note: str = ""


def manifest_owner(manifest: dict[str, Any]) -> str:
    """The owner fingerprint a manifest claims, before it is verified ("" if none)."""
    payload = manifest.get("payload")
    owner = payload.get("owner") if isinstance(payload, dict) else None
    fingerprint = owner.get("fingerprint") if isinstance(owner, dict) else None
    return fingerprint if isinstance(fingerprint, str) else ""


def member_from_body(body: MemberBody | AddMember, invitation: str) -> Member:
    try:
        identity = PublicIdentity.from_document(body.identity)
    except CleanroomError as exc:
        raise GovernanceError(f"invalid member identity: {exc}") from exc
    if len(set(body.roles)) != len(body.roles):
        raise GovernanceError(f"member {identity.name} has a role listed twice")
    return Member(identity, frozenset(body.roles), MemberStatus.INVITED, invitation)


SignatureCheck = Callable[[jws.ParsedToken, Ed25519PublicKey], None]


@dataclass
class RoomBase:
    """The room's derived state and the lookups every concern shares. The rules
    that change it live in one module per concern (membership, proposals,
    datasets, jobs); :class:`cleanroom.governance.state.RoomState` joins them."""

    room: str
    name: str
    constitution: Constitution
    creator: str
    members: dict[str, Member]
    status: RoomStatus = RoomStatus.PENDING
    datasets: dict[str, Dataset] = field(default_factory=dict)
    analyses: dict[str, Analysis] = field(default_factory=dict)
    measurements: tuple[tuple[str, str], ...] = ()
    allow_insecure_virtual: bool = False
    terms: AttestationTerms | None = None  # the contract's terms besides the measurement
    limits: SetLimits | None = None
    proposals: dict[str, Proposal] = field(default_factory=dict)
    service: PublicIdentity | None = None
    deposits: dict[str, Deposit] = field(default_factory=dict)  # by manifest digest
    jobs: dict[str, Job] = field(default_factory=dict)
    _enclaves: dict[str, str] = field(default_factory=dict)  # enclave fingerprint -> job
    brokers: dict[str, PublicIdentity] = field(default_factory=dict)  # named by deposits
    nonces: set[str] = field(default_factory=set)
    contract_version: int = 0
    scoring_jobs: int = 0  # scoring jobs requested over the room's life (SetLimits caps)
    scored_rows: int = 0  # rows of records those jobs score
    size: int = 0
    last_time: int = 0
    seen: set[str] = field(default_factory=set)
    _deadlines: list[tuple[int, str]] = field(default_factory=list)  # heap of open proposals
    # the service's memo of check outcomes (its own view only): not part of the state
    memo: CheckMemo | None = field(default=None, repr=False, compare=False)

    def _record(self, statement: Statement, time_ms: int) -> None:
        self.seen.add(statement.digest)
        self.size += 1
        self.last_time = time_ms

    def _dataset(self, name: str) -> Dataset:
        dataset = self.datasets.get(name)
        if dataset is None:
            raise GovernanceError(f"no dataset {name!r} in this room")
        return dataset

    def _analysis(self, name: str) -> Analysis:
        analysis = self.analyses.get(name)
        if analysis is None:
            raise GovernanceError(f"no analysis {name!r} in this room")
        return analysis

    def _active(self, fingerprint: str, role: str | None = None) -> Member:
        member = self.members.get(fingerprint)
        if member is None or member.status != MemberStatus.ACTIVE:
            raise GovernanceError(f"{fingerprint[:12] or '(none)'}... is not an active member")
        if role is not None and role not in member.roles:
            raise GovernanceError(f"{member.identity.name} does not have the {role} role")
        return member

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise GovernanceError(f"no job {job_id[:12]}... in this room")
        return job

    def job_inputs(self, job_id: str) -> list[tuple[str, str]]:
        """(dataset, manifest digest) of the current version of each input of a job."""
        inputs = []
        for name in self.job(job_id).inputs:
            dataset = self._dataset(name)
            if not dataset.versions:
                raise GovernanceError(f"dataset {name!r} has no registered version")
            inputs.append((name, dataset.versions[-1].digest))
        return inputs

    def enclave_job(self, fingerprint: str) -> Job | None:
        """The job whose keys were released to the enclave with this key, if any."""
        job_id = self._enclaves.get(fingerprint)
        return self.jobs[job_id] if job_id is not None else None

    def voters(self, *, excluding: str | None = None) -> frozenset[str]:
        return frozenset(fp for fp, m in self.members.items() if m.votes and fp != excluding)

    def result_recipients(self) -> frozenset[str]:
        return frozenset(
            fp
            for fp, m in self.members.items()
            if m.status == MemberStatus.ACTIVE and "result_recipient" in m.roles
        )

    def version(self, name: str, digest: str) -> DatasetVersion:
        """The version of dataset ``name`` whose manifest has ``digest``."""
        for version in self._dataset(name).versions:
            if version.digest == digest:
                return version
        raise GovernanceError(f"dataset {name!r} has no version {digest[:12]}...")

    def _consenting(self, names: Iterable[str]) -> None:
        for name in names:
            if not self._dataset(name).consent:
                raise GovernanceError(f"the owner of {name!r} has revoked consent")

    def release_policy(self) -> Policy:
        if not self.measurements:
            raise GovernanceError("the room's contract approves no measurement: nothing may run")
        return Policy(
            frozenset(self.measurements),
            allow_insecure_virtual=self.allow_insecure_virtual,
            terms=self.terms.policy() if self.terms is not None else None,
        )
