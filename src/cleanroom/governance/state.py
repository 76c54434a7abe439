"""The room's state, derived by folding over its statements (pure).

:class:`RoomState` is a guarded state machine. :meth:`RoomState.apply` takes
one parsed statement and the time the ledger assigned to it, checks every rule
that concerns it, and only then changes the state; on any failure it raises
:class:`GovernanceError` (or :class:`IntegrityError` for a bad signature) and
the state is unchanged, except that proposals whose deadline passed before
that time are marked expired, which depends on time alone.

Checks, numbered as in the code:
(1) the statement belongs to this room; (2) it was never recorded before
(replay); (3) its author is a member in a state allowed to make it, the
ledger service (denials, failed jobs), an attested key broker a deposit was
sealed to (its releases and denials) or the attested enclave of a running job
(its result), and its signature verifies under that author's key; (4) the
kind-specific rules.

Members: invited -> active (member.accept) | declined (member.decline, final;
a room still being formed is then declined for good); active -> removed (an
accepted remove_member). A removed member may still sign consent.revoke for
its own datasets, nothing else.

Jobs: requested -> running (every input's key released: by its owner, or by
the attested broker its owner deposited it with) ->
succeeded | failed. A key release is re-checked here in full: the evidence
verifies at the entry's time and binds the nonce, enclave key and job; the
measurement is approved by the contract (insecure-virtual only if the contract
allows it); the analysis is still active; every input's owner consents and
deposited a key that its own release policy lets this platform have; the
nonce was never used. So every auditor re-checks every release offline.

Proposals: open -> accepted | rejected | withdrawn | expired. Approvers are
fixed when a proposal opens. An accepted proposal is applied at the ledger
position of the ballot that decided it; if it no longer applies then (its
preconditions are re-checked), it is rejected with the reason recorded.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cleanroom.attestation import Policy, appraise, check_binding, verify_evidence
from cleanroom.attestation.claims import Claims
from cleanroom.attestation.evidence import check_broker_binding
from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.datasets.manifest import Manifest
from cleanroom.errors import AttestationError, CleanroomError, GovernanceError
from cleanroom.governance.constitution import DATASET_ACTIONS, Constitution
from cleanroom.governance.statements import (
    AddAnalysis,
    AddMember,
    AttestationTerms,
    Ballot,
    ChangeConstitution,
    ConsentRevoke,
    JobComplete,
    JobFail,
    JobRequest,
    KeyDeny,
    KeyDeposit,
    KeyRelease,
    MemberAccept,
    MemberBody,
    MemberDecline,
    ProposalWithdraw,
    RegisterDataset,
    RemoveMember,
    RestoreConsent,
    RetireAnalysis,
    RoomCreate,
    SetAnalysisRule,
    SetLimits,
    SetMeasurements,
    SetPrivacyBudget,
    Statement,
)
from cleanroom.identities.identity import PublicIdentity
from cleanroom.policy.check import Source, check_dp, check_query
from cleanroom.policy.grammar import PolicyError
from cleanroom.policy.memo import CheckMemo
from cleanroom.policy.rules import DpSpec, Rule, check_rule

SignatureCheck = Callable[[jws.ParsedToken, Ed25519PublicKey], None]


@dataclass
class Member:
    identity: PublicIdentity
    roles: frozenset[str]
    status: str  # "invited" | "active" | "declined" | "removed"
    invitation: str  # digest of the statement the member must accept
    removed_at: int = -1  # the position of the entry that removed it (-1: not removed)
    withdrawn: set[str] = field(default_factory=set)  # datasets it revoked once removed

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def votes(self) -> bool:
        return self.status == "active" and bool(self.roles - {"observer"})


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
    status: str = "active"
    dp: DpSpec | None = None
    approved_by: frozenset[str] = frozenset()


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
    status: str = "requested"  # requested | running | succeeded | failed
    enclave: PublicIdentity | None = None
    platform: str = ""
    measurement: str = ""
    assurance: str = ""
    released: tuple[tuple[str, str], ...] = ()  # (dataset, manifest digest)
    nonce: str = ""  # the key request's nonce, fixed by the job's first release
    expected: tuple[tuple[str, str], ...] = ()  # its inputs, fixed by the first release too
    input_keys: dict[str, str] = field(default_factory=dict)  # manifest -> key sealed to enclave
    waiting_for: tuple[str, ...] = ()  # owners (fingerprints) whose release is still due
    output: dict[str, Any] | None = None
    sealed_keys: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    finished_at: int = 0

    def view(self, names: dict[str, str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "analysis": self.analysis,
            "analysis_digest": self.analysis_digest,
            "requester": names.get(self.requester, self.requester),
            "requested_at": self.requested_at,
            "status": self.status,
            "inputs": list(self.inputs),
            "recipients": [names.get(r, r) for r in self.recipients],
            "enclave": self.enclave.fingerprint if self.enclave else None,
            "waiting_for": [names.get(w, w) for w in self.waiting_for],
            "platform": self.platform,
            "measurement": self.measurement,
            "assurance": self.assurance,
            "output": self.output,
            "reason": self.reason,
            "finished_at": self.finished_at,
        }


@dataclass
class Proposal:
    id: str
    proposer: str
    action: Any
    approvers: frozenset[str]
    expires_at: int
    opened_at: int
    status: str = "open"
    approvals: set[str] = field(default_factory=set)
    rejections: set[str] = field(default_factory=set)
    note: str = ""


def _manifest_owner(manifest: dict[str, Any]) -> str:
    """The owner fingerprint a manifest claims, before it is verified ("" if none)."""
    payload = manifest.get("payload")
    owner = payload.get("owner") if isinstance(payload, dict) else None
    fingerprint = owner.get("fingerprint") if isinstance(owner, dict) else None
    return fingerprint if isinstance(fingerprint, str) else ""


def _member_from_body(body: MemberBody | AddMember, invitation: str) -> Member:
    try:
        identity = PublicIdentity.from_document(body.identity)
    except CleanroomError as exc:
        raise GovernanceError(f"invalid member identity: {exc}") from exc
    if len(set(body.roles)) != len(body.roles):
        raise GovernanceError(f"member {identity.name} has a role listed twice")
    return Member(identity, frozenset(body.roles), "invited", invitation)


@dataclass
class RoomState:
    room: str
    name: str
    constitution: Constitution
    creator: str
    members: dict[str, Member]
    status: str = "pending"
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
    _nonces: set[str] = field(default_factory=set)
    contract_version: int = 0
    size: int = 0
    last_time: int = 0
    seen: set[str] = field(default_factory=set)
    _deadlines: list[tuple[int, str]] = field(default_factory=list)  # heap of open proposals
    # the service's memo of check outcomes (its own view only): not part of the state
    memo: CheckMemo | None = field(default=None, repr=False, compare=False)

    # -- genesis ------------------------------------------------------------------

    @classmethod
    def genesis(
        cls,
        statement: Statement,
        time_ms: int,
        check: SignatureCheck,
        service: PublicIdentity | None = None,
    ) -> RoomState:
        """The state after a ``room.create`` statement (the first ledger entry).

        ``service`` is the ledger service whose key signs key denials and
        failed jobs; without it, such statements are refused."""
        if statement.kind != "room.create":
            raise GovernanceError("a room's first statement must be room.create")
        body: RoomCreate = statement.body
        members: dict[str, Member] = {}
        for member_body in body.members:
            member = _member_from_body(member_body, statement.digest)
            if member.fingerprint in members:
                raise GovernanceError(f"member {member.identity.name} is listed twice")
            members[member.fingerprint] = member
        creator = members.get(statement.author)
        if creator is None:
            raise GovernanceError("the room's creator must be one of its members")
        check(statement.parsed, creator.identity.signing_key)
        constitution = Constitution.from_body(body.constitution)
        constitution.check_satisfiable(sum(1 for m in members.values() if m.roles - {"observer"}))
        creator.status = "active"  # creating the room is the creator's acceptance
        state = cls(
            statement.room, body.name, constitution, creator.fingerprint, members, service=service
        )
        state._record(statement, time_ms)
        state._maybe_activate()
        return state

    # -- the transition -------------------------------------------------------------

    def apply(self, statement: Statement, time_ms: int, check: SignatureCheck) -> None:
        """Apply one statement recorded at ``time_ms``; raises if it is not allowed."""
        if statement.room != self.room:  # (1)
            raise GovernanceError("statement belongs to another room")
        if statement.digest in self.seen:  # (2)
            raise GovernanceError("statement was already recorded (replay)")
        if time_ms < self.last_time:
            raise GovernanceError("ledger time went backwards")
        self._expire(time_ms)
        if self.service is not None and statement.author == self.service.fingerprint:  # (3)
            self._apply_service(statement, time_ms, check, self.service)
        elif statement.author in self._enclaves:
            self._apply_enclave(statement, time_ms, check)
        elif statement.author in self.brokers:
            self._apply_broker(statement, time_ms, check, self.brokers[statement.author])
        else:
            self._apply_member(statement, time_ms, check)
        self._record(statement, time_ms)

    def _apply_service(
        self, statement: Statement, time_ms: int, check: SignatureCheck, service: PublicIdentity
    ) -> None:
        check(statement.parsed, service.signing_key)
        handler = {"key.deny": self._deny, "job.fail": self._service_fail}.get(statement.kind)
        if handler is None:
            raise GovernanceError(f"the ledger service cannot make {statement.kind} statements")
        handler(statement, time_ms)  # (4)

    def _apply_broker(
        self, statement: Statement, time_ms: int, check: SignatureCheck, broker: PublicIdentity
    ) -> None:
        check(statement.parsed, broker.signing_key)
        if statement.kind == "key.release":  # (4)
            self._release(statement, time_ms, releaser=broker.fingerprint)
        elif statement.kind == "key.deny":
            body: KeyDeny = statement.body
            job = self.job(body.job)
            if not self.releasable(job, broker.fingerprint):
                raise GovernanceError("a key broker can deny only jobs that need its keys")
            self._deny(statement, time_ms)
        else:
            raise GovernanceError(f"a key broker cannot make {statement.kind} statements")

    def _apply_enclave(self, statement: Statement, time_ms: int, check: SignatureCheck) -> None:
        job = self.jobs[self._enclaves[statement.author]]
        if job.enclave is None:  # cannot happen: enclaves are registered with their job
            raise GovernanceError("no enclave key recorded for this job")
        check(statement.parsed, job.enclave.signing_key)
        handler = {"job.complete": self._complete, "job.fail": self._enclave_fail}.get(
            statement.kind
        )
        if handler is None:
            raise GovernanceError(f"an enclave cannot make {statement.kind} statements")
        handler(statement, job, time_ms)  # (4)

    def _apply_member(self, statement: Statement, time_ms: int, check: SignatureCheck) -> None:
        author = self.members.get(statement.author)
        if author is None:
            raise GovernanceError("statement author is not a member of this room")
        if self.status == "declined":
            raise GovernanceError("an invitee declined this room: it can never become active")
        if statement.kind in ("member.accept", "member.decline"):
            if author.status != "invited":
                raise GovernanceError(f"{author.identity.name} has no pending invitation")
        elif statement.kind == "consent.revoke" and author.status == "removed":
            pass  # a removed owner can always still withdraw its own data (see _revoke)
        elif author.status != "active":
            raise GovernanceError(
                f"{author.identity.name} is not an active member ({author.status})"
            )
        elif self.status != "active":
            raise GovernanceError("the room is not active yet: members must accept first")
        check(statement.parsed, author.identity.signing_key)
        handler = {  # (4)
            "member.accept": self._accept,
            "member.decline": self._decline,
            "proposal.create": self._propose,
            "ballot": self._ballot,
            "proposal.withdraw": self._withdraw,
            "consent.revoke": self._revoke,
            "key.deposit": self._deposit,
            "job.request": self._request,
            "key.release": self._owner_release,
            "key.deny": self._owner_deny,
        }.get(statement.kind)
        if handler is None:
            raise GovernanceError(f"{statement.kind} is not allowed after the room is created")
        handler(statement, author, time_ms)

    def _record(self, statement: Statement, time_ms: int) -> None:
        self.seen.add(statement.digest)
        self.size += 1
        self.last_time = time_ms

    def _expire(self, time_ms: int) -> None:
        # a heap by deadline: O(log n) per expiry, however many proposals are open
        while self._deadlines and self._deadlines[0][0] <= time_ms:
            _, pid = heapq.heappop(self._deadlines)
            if self.proposals[pid].status == "open":
                self.proposals[pid].status = "expired"

    def _maybe_activate(self) -> None:
        if self.status == "pending" and all(m.status == "active" for m in self.members.values()):
            self.status = "active"
            self.contract_version = 1

    # -- statement kinds -------------------------------------------------------------

    def _accept(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: MemberAccept = statement.body
        if body.invitation != author.invitation:
            raise GovernanceError("acceptance names a different invitation than the member's")
        author.status = "active"
        self._maybe_activate()

    def _decline(self, statement: Statement, author: Member, time_ms: int) -> None:
        """The invitee turns its invitation down. A room still being formed can then
        never become active (every listed member must accept): it is ``declined``,
        for good, and takes no further statement. In an active room (an invitation
        by ``add_member``) only the invitee's membership ends."""
        body: MemberDecline = statement.body
        if body.invitation != author.invitation:
            raise GovernanceError("the decline names a different invitation than the member's")
        author.status = "declined"
        if self.status == "pending":
            self.status = "declined"

    def _propose(self, statement: Statement, author: Member, time_ms: int) -> None:
        action = statement.body.action
        if not author.votes:
            raise GovernanceError(f"{author.identity.name} is an observer and cannot propose")
        self._check_action(action, author.fingerprint)
        approvers = self.approvers(action)
        if self.constitution.rule == "threshold" and len(approvers) < (self.constitution.k or 0):
            raise GovernanceError(
                f"threshold k={self.constitution.k} cannot be met by {len(approvers)} approver(s)"
            )
        self.proposals[statement.digest] = Proposal(
            id=statement.digest,
            proposer=author.fingerprint,
            action=action,
            approvers=approvers,
            expires_at=time_ms + self.constitution.proposal_ttl_ms,
            opened_at=time_ms,
        )
        heapq.heappush(
            self._deadlines, (time_ms + self.constitution.proposal_ttl_ms, statement.digest)
        )

    def _open_proposal(self, proposal_id: str) -> Proposal:
        proposal = self.proposals.get(proposal_id)
        if proposal is None:
            raise GovernanceError(f"no proposal {proposal_id[:12]}... in this room")
        if proposal.status != "open":
            raise GovernanceError(f"proposal {proposal_id[:12]}... is {proposal.status}, not open")
        return proposal

    def _ballot(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: Ballot = statement.body
        proposal = self._open_proposal(body.proposal)
        voter = author.fingerprint
        if voter not in proposal.approvers:
            raise GovernanceError(f"{author.identity.name} is not an approver of this proposal")
        if voter in proposal.approvals or voter in proposal.rejections:
            raise GovernanceError(f"{author.identity.name} already voted on this proposal")
        (proposal.approvals if body.vote == "approve" else proposal.rejections).add(voter)
        outcome = self.constitution.decide(
            proposal.approvers, proposal.approvals, proposal.rejections
        )
        if outcome == "open":
            return
        if outcome == "rejected":
            proposal.status = "rejected"
            return
        try:
            self._check_action(proposal.action, proposal.proposer)
        except GovernanceError as exc:
            proposal.status, proposal.note = "rejected", f"no longer applicable: {exc}"
            return
        proposal.status = "accepted"
        self._apply_action(proposal.action, proposal)
        self.contract_version += 1

    def _withdraw(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: ProposalWithdraw = statement.body
        proposal = self._open_proposal(body.proposal)
        if proposal.proposer != author.fingerprint:
            raise GovernanceError("only the proposer can withdraw a proposal")
        proposal.status = "withdrawn"

    def _revoke(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: ConsentRevoke = statement.body
        dataset = self._dataset(body.dataset)
        if dataset.owner != author.fingerprint:
            raise GovernanceError("only the dataset's owner can revoke consent")
        if author.status == "removed":
            # the removal already withdrew its consent: the owner's own revocation is
            # recorded once per dataset (its signed word on the ledger) and changes
            # nothing else; a repeat is refused, so a removed member cannot fill the ledger
            if dataset.name in author.withdrawn:
                raise GovernanceError(f"{author.identity.name} already revoked {dataset.name}")
            author.withdrawn.add(dataset.name)
            if dataset.consent:  # cannot happen (removal withdrew it), kept fail-closed
                dataset.consent = False
                self.contract_version += 1
            return
        if not dataset.consent:
            raise GovernanceError(f"consent for {dataset.name} is already revoked")
        dataset.consent = False
        self.contract_version += 1

    # -- key release and jobs ----------------------------------------------------------

    def _deposit(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: KeyDeposit = statement.body
        if "data_provider" not in author.roles:
            raise GovernanceError(f"{author.identity.name} is not a data provider")
        dataset = self.datasets.get(body.dataset)
        if dataset is not None and dataset.owner != author.fingerprint:
            raise GovernanceError(f"dataset {body.dataset!r} belongs to another member")
        # the manifest must be a version of this dataset that the author signed (registered,
        # or proposed for registration): a deposit can never replace another owner's
        existing = self.deposits.get(body.manifest)
        if existing is not None and (existing.owner, existing.dataset) != (
            author.fingerprint,
            body.dataset,
        ):
            raise GovernanceError("that manifest's key was deposited by another member")
        if existing is not None and existing.release == "broker" and body.release == "owner":
            raise GovernanceError(
                "this key was deposited with the broker, which can still open it: publish a "
                "new version (a new key) to keep the key at home"
            )
        if (body.dataset, author.fingerprint) not in self._manifest_owners(body.manifest):
            raise GovernanceError(
                f"the manifest is not a version of {body.dataset!r} signed by "
                f"{author.identity.name}"
            )
        policy = body.policy
        deposit = Deposit(
            body.dataset,
            body.manifest,
            author.fingerprint,
            body.sealed_key,
            frozenset(policy.platforms),
            frozenset(policy.measurements) if policy.measurements is not None else None,
        )
        if body.broker is not None:
            deposit.broker, deposit.broker_claims = self.check_broker(
                body.broker.model_dump(), time_ms, deposit.platforms, deposit.measurements
            )
            self.brokers[deposit.broker.fingerprint] = deposit.broker
        self.deposits[body.manifest] = deposit

    def check_broker(
        self,
        offer: dict[str, Any],
        time_ms: int,
        platforms: frozenset[str],
        measurements: frozenset[str] | None,
    ) -> tuple[PublicIdentity, Claims]:
        """The broker a key may be sealed to: its evidence verifies at ``time_ms``
        and binds its identity and the depositor's nonce; its platform and
        measurement are approved by the room's contract and by the deposit's own
        policy; its key is no member's, enclave's or the service's. The SDK checks
        a broker with this before sealing a key to it; the ledger again on deposit."""
        try:
            identity = PublicIdentity.from_document(offer.get("identity"))
            nonce = str(offer.get("nonce", ""))
            claims = verify_evidence(
                offer.get("evidence"), now=datetime.fromtimestamp(time_ms / 1000, UTC)
            )
            check_broker_binding(claims, nonce=nonce, tee_pubkey=identity.fingerprint)
            appraise(claims, self.release_policy())
        except CleanroomError as exc:
            raise GovernanceError(f"the key broker is not attested: {exc}") from exc
        taken = {*self.members, *self._enclaves}
        if self.service is not None:
            taken.add(self.service.fingerprint)
        if identity.fingerprint in taken:
            raise GovernanceError("a key broker's key must be its own")
        if claims.platform not in platforms or (
            measurements is not None and claims.measurement not in measurements
        ):
            raise GovernanceError(
                f"the key broker runs {claims.measurement}, which the "
                "deposit's own policy does not allow"
            )
        return identity, claims

    def _manifest_owners(self, digest: str) -> set[tuple[str, str]]:
        """(dataset, owner) of every registered or proposed manifest with ``digest``."""
        found = {
            (name, dataset.owner)
            for name, dataset in self.datasets.items()
            for version in dataset.versions
            if version.digest == digest
        }
        for proposal in self.proposals.values():
            action = proposal.action
            if (
                isinstance(action, RegisterDataset)
                and proposal.status not in ("rejected", "withdrawn")
                and canonical_digest(action.manifest) == digest
            ):
                payload = action.manifest.get("payload")
                name = payload.get("name") if isinstance(payload, dict) else None
                found.add((str(name), _manifest_owner(action.manifest)))
        return found

    def _request(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: JobRequest = statement.body
        if not author.roles & {"analyst", "result_recipient"}:
            raise GovernanceError("only analysts and result recipients can run analyses")
        analysis = self._analysis(body.analysis)
        if analysis.status != "active":
            raise GovernanceError(f"analysis {analysis.name!r} is retired")
        if analysis.digest != body.digest:
            raise GovernanceError(f"the text of analysis {analysis.name!r} is not the one expected")
        self._consenting(analysis.inputs)
        job = Job(
            statement.digest,
            analysis.name,
            analysis.digest,
            author.fingerprint,
            time_ms,
            analysis.inputs,
            analysis.recipients,
        )
        self.jobs[statement.digest] = job
        if all(self._dataset(name).versions for name in job.inputs):
            job.waiting_for = self._waiting(job, self.job_inputs(job.id))  # who must release

    def _consenting(self, names: Iterable[str]) -> None:
        for name in names:
            if not self._dataset(name).consent:
                raise GovernanceError(f"the owner of {name!r} has revoked consent")

    def enclave_job(self, fingerprint: str) -> Job | None:
        """The job whose keys were released to the enclave with this key, if any."""
        job_id = self._enclaves.get(fingerprint)
        return self.jobs[job_id] if job_id is not None else None

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

    def release_policy(self) -> Policy:
        if not self.measurements:
            raise GovernanceError("the room's contract approves no measurement: nothing may run")
        return Policy(
            frozenset(self.measurements),
            allow_insecure_virtual=self.allow_insecure_virtual,
            terms=self.terms.policy() if self.terms is not None else None,
        )

    def _check_release(self, job: Job, claims: Claims) -> list[tuple[str, str]]:
        # R5 the job still waits for keys
        if job.status != "requested":
            raise GovernanceError(f"job {job.id[:12]}... is {job.status}: keys go to new jobs only")
        # R6 the contract approves the platform, measurement and terms (a refusal of
        # the room's, not a fault of the request: a releaser denies it, signed)
        try:
            appraise(claims, self.release_policy())
        except AttestationError as exc:
            raise GovernanceError(str(exc)) from exc
        # R7 the analysis is still the approved, active text the job named
        analysis = self._analysis(job.analysis)
        if analysis.status != "active" or analysis.digest != job.analysis_digest:
            raise GovernanceError(f"analysis {job.analysis!r} is no longer approved")
        # R8 every input's owner still consents
        self._consenting(job.inputs)
        # R9 the inputs' rules still admit the analysis
        self.check_policy(
            analysis.text, analysis.inputs, analysis.recipients, analysis.dp, analysis.approved_by
        )
        self._check_budget(job, analysis)  # R10
        inputs = self.job_inputs(job.id)
        self._check_deposits(inputs, claims)  # R11
        return inputs

    def _owner_release(self, statement: Statement, author: Member, time_ms: int) -> None:
        self._release(statement, time_ms, releaser=author.fingerprint)

    def _check_budget(self, job: Job, analysis: Analysis) -> None:
        # R10 a DP analysis finds budget left in every input not yet charged for this job
        if analysis.dp is not None:
            charged = {name for name, _ in job.released}  # by this job's earlier releases
            for name in analysis.inputs:
                if name in charged:
                    continue
                dataset = self.datasets[name]
                if dataset.remaining + 1e-12 < analysis.dp.epsilon:
                    raise GovernanceError(
                        f"the privacy budget of {name!r} is exhausted: {dataset.remaining:g} "
                        f"epsilon left, the analysis needs {analysis.dp.epsilon:g}"
                    )

    def _check_deposits(self, inputs: list[tuple[str, str]], claims: Claims) -> None:
        # R11 each input's current version has its owner's deposit, whose own policy
        # admits this platform and measurement
        for name, manifest in inputs:
            deposit = self.deposits.get(manifest)
            if deposit is None or deposit.owner != self.datasets[name].owner:
                raise GovernanceError(f"the owner of {name!r} has deposited no key for it")
            if claims.platform not in deposit.platforms:
                raise GovernanceError(
                    f"the owner of {name!r} releases its key to {sorted(deposit.platforms)} only"
                )
            if deposit.measurements is not None and claims.measurement not in deposit.measurements:
                raise GovernanceError(
                    f"the owner of {name!r} has not approved measurement "
                    f"{claims.platform}:{claims.measurement} for its key"
                )
            if deposit.broker_claims is not None:  # the broker holding it is still approved
                try:
                    appraise(deposit.broker_claims, self.release_policy())
                except AttestationError as exc:
                    raise GovernanceError(
                        f"the key broker holding the key of {name!r} is no longer approved "
                        f"by the contract ({exc}): its owner must deposit it again"
                    ) from exc

    def releasable(self, job: Job, releaser: str) -> list[tuple[str, str]]:
        """The inputs of ``job`` that ``releaser`` (a fingerprint) releases: an
        attested broker those deposited with it, an owner its own kept at home."""
        mine = []
        for name, manifest in self.job_inputs(job.id):
            deposit = self.deposits.get(manifest)
            if deposit is None:
                continue
            by_broker = deposit.broker is not None and deposit.broker.fingerprint == releaser
            if by_broker or (deposit.release == "owner" and deposit.owner == releaser):
                mine.append((name, manifest))
        return mine

    def due(self, job: Job, releaser: str) -> list[tuple[str, str]]:
        """What ``releaser`` still has to release for ``job``: its inputs not released
        yet, while the job waits for keys (else nothing)."""
        if job.status != "requested":
            return []
        return [
            item
            for item in self.releasable(job, releaser)
            if item not in job.released and item[1] not in job.input_keys
        ]

    def check_key_request(self, request: dict[str, Any], *, now_ms: int) -> list[tuple[str, str]]:
        """The release decision, without recording anything: may the keys of this
        job go to the enclave that sent ``request`` (job, enclave, nonce,
        evidence)? Raises if not; returns the job's inputs. The broker, each
        owner's key agent and every auditor decide with this one function."""
        try:
            body = KeyRelease.model_validate(
                {**request, "inputs": [{"dataset": "x", "manifest": "0" * 64}]}
            )
            job = self.job(body.job)
        except (ValueError, GovernanceError) as exc:
            raise KeyRequestError(f"the key request is malformed: {exc}") from exc
        return self._check_request(body, job, now_ms)[2]

    def _check_request(
        self, body: KeyRelease, job: Job, time_ms: int
    ) -> tuple[PublicIdentity, Claims, list[tuple[str, str]]]:
        """The release decision, conditions R1-R11 (docs/adr/0019 and 0020). R1-R4 are
        about the request itself (KeyRequestError): anyone can forge a bad one, so it
        says nothing about whether the room would release. R5-R11 are the room's."""
        # R1 the enclave's identity is well formed
        try:
            enclave = PublicIdentity.from_document(body.enclave)
        except CleanroomError as exc:
            raise KeyRequestError(f"invalid enclave identity: {exc}") from exc
        if job.enclave is None:  # R2 the first release: a fresh enclave key and nonce
            known = {*self._enclaves, *self.members, *self.brokers}
            service = self.service is not None and enclave.fingerprint == self.service.fingerprint
            if enclave.fingerprint in known or service:
                raise KeyRequestError("an enclave key must be fresh for each job")
            if body.nonce in self._nonces:
                raise KeyRequestError("the key release nonce was used before (replay)")
        elif enclave.fingerprint != job.enclave.fingerprint or body.nonce != job.nonce:
            # R2' a later release: the same enclave key and nonce as the first
            raise KeyRequestError("this job's keys already go to another enclave (replay)")
        # R3 the evidence verifies now and binds this nonce, enclave key and job
        claims = verify_evidence(body.evidence, now=datetime.fromtimestamp(time_ms / 1000, UTC))
        check_binding(claims, nonce=body.nonce, tee_pubkey=enclave.fingerprint, job=job.id)
        # R4 a later release names evidence of the same platform and measurement
        if job.enclave is not None and (claims.platform, claims.measurement) != (
            job.platform,
            job.measurement,
        ):
            raise KeyRequestError("this job's releases must name the same evidence")
        # R5-R11 the room's contract, rules, budgets and every owner's policy allow it
        return enclave, claims, self._check_release(job, claims)

    def _release(self, statement: Statement, time_ms: int, *, releaser: str) -> None:
        """One key release for a job: by an attested broker or by one data owner. The first
        fixes the job's enclave and nonce; the job runs once every input is released."""
        body: KeyRelease = statement.body
        job = self.job(body.job)
        enclave, claims, inputs = self._check_request(body, job, time_ms)
        if job.enclave is not None and tuple(inputs) != job.expected:
            raise GovernanceError("the job's inputs changed since its first release")
        # (4) the releaser releases exactly what is its to release, once
        # (a broker may release in steps: what its deposits held when it was asked)
        named = [(i.dataset, i.manifest) for i in body.inputs]
        if any(m in job.input_keys or (d, m) in job.released for d, m in named):
            raise GovernanceError("these inputs were released to this job already (replay)")
        due = [i for i in self.releasable(job, releaser) if i not in job.released]
        if not due or named != due:
            raise GovernanceError("the release names other inputs than the releaser's own")
        sealed = {k.manifest: k.sealed for k in body.sealed_keys or []}
        if body.sealed_keys is not None and (
            len(sealed) != len(body.sealed_keys)
            or [(k.dataset, k.manifest) for k in body.sealed_keys] != named
        ):
            raise GovernanceError("the release must carry one sealed key per input it names")
        if body.sealed_keys is None:
            raise GovernanceError("a release carries its keys, sealed to the enclave")
        # (5) record: the first release registers the enclave; DP budgets are charged
        # for what is released now (the release is the charge)
        if job.enclave is None:
            job.enclave, job.nonce, job.expected = enclave, body.nonce, tuple(inputs)
            job.platform, job.measurement, job.assurance = (
                claims.platform,
                claims.measurement,
                claims.assurance,
            )
            self._enclaves[enclave.fingerprint] = job.id
            self._nonces.add(body.nonce)
        job.input_keys.update(sealed)
        job.released = tuple(i for i in inputs if i in {*job.released, *named})
        dp = self.analyses[job.analysis].dp
        if dp is not None:
            for name, _ in named:
                self.datasets[name].spent += float(dp.epsilon)
        job.waiting_for = self._waiting(job, inputs)
        if len(job.released) == len(inputs):
            job.status = "running"

    def _waiting(self, job: Job, inputs: list[tuple[str, str]]) -> tuple[str, ...]:
        """Who must still release: owners (fingerprints) and, for deposits, the broker."""
        due = []
        for name, manifest in inputs:
            if (name, manifest) in job.released:
                continue
            deposit = self.deposits.get(manifest)
            # a missing deposit waits for the dataset's owner, as an owner-held key does
            who = "key broker" if deposit and deposit.broker else self._dataset(name).owner
            if who not in due:
                due.append(who)
        return tuple(due)

    def _owner_deny(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: KeyDeny = statement.body
        job = self.job(body.job)
        if not any(self._dataset(name).owner == author.fingerprint for name in job.inputs):
            raise GovernanceError("only the owner of one of the job's inputs can deny its keys")
        self._deny(statement, time_ms)

    def _fail(self, job: Job, reason: str, time_ms: int, *, allowed: tuple[str, ...]) -> None:
        if job.status not in allowed:
            raise GovernanceError(f"job {job.id[:12]}... is {job.status}")
        job.status, job.reason, job.finished_at = "failed", reason, time_ms

    def _deny(self, statement: Statement, time_ms: int) -> None:
        body: KeyDeny = statement.body
        self._fail(
            self.job(body.job),
            f"key release denied: {body.reason}",
            time_ms,
            allowed=("requested",),
        )

    def _service_fail(self, statement: Statement, time_ms: int) -> None:
        body: JobFail = statement.body
        self._fail(self.job(body.job), body.reason, time_ms, allowed=("requested", "running"))

    def _enclave_fail(self, statement: Statement, job: Job, time_ms: int) -> None:
        body: JobFail = statement.body
        if body.job != job.id:
            raise GovernanceError("an enclave reports on its own job only")
        self._fail(job, body.reason, time_ms, allowed=("requested", "running"))

    def _complete(self, statement: Statement, job: Job, time_ms: int) -> None:
        body: JobComplete = statement.body
        if body.job != job.id:
            raise GovernanceError("an enclave reports on its own job only")
        if job.status != "running":
            raise GovernanceError(f"job {job.id[:12]}... is {job.status}")
        recipients = [k.recipient for k in body.sealed_keys]
        if sorted(recipients) != sorted(set(job.recipients)) or len(set(recipients)) != len(
            recipients
        ):
            raise GovernanceError("the result must be sealed to exactly the analysis's recipients")
        expected = [
            (name, self.version(name, manifest).manifest.sha256) for name, manifest in job.released
        ]
        if [(i.dataset, i.sha256) for i in body.inputs] != expected:
            raise GovernanceError("the job reports other inputs than the ones released to it")
        try:
            self._consenting(job.inputs)
        except GovernanceError as exc:
            raise GovernanceError(f"{exc}: the result cannot be released") from exc
        job.status, job.finished_at = "succeeded", time_ms
        job.output = {
            **body.output.model_dump(),
            "duration_ms": body.duration_ms,
            "phases": dict(body.phases),
        }
        job.sealed_keys = {k.recipient: k.sealed for k in body.sealed_keys}

    def version(self, name: str, digest: str) -> DatasetVersion:
        """The version of dataset ``name`` whose manifest has ``digest``."""
        for version in self._dataset(name).versions:
            if version.digest == digest:
                return version
        raise GovernanceError(f"dataset {name!r} has no version {digest[:12]}...")

    # -- actions ------------------------------------------------------------------------

    def voters(self, *, excluding: str | None = None) -> frozenset[str]:
        return frozenset(fp for fp, m in self.members.items() if m.votes and fp != excluding)

    def result_recipients(self) -> frozenset[str]:
        return frozenset(
            fp
            for fp, m in self.members.items()
            if m.status == "active" and "result_recipient" in m.roles
        )

    def approvers(self, action: Any) -> frozenset[str]:
        """Who must decide ``action`` under the constitution in force."""
        subject = action.member if isinstance(action, RemoveMember) else None
        if self.constitution.rule != "default" or action.type not in DATASET_ACTIONS:
            required = self.voters(excluding=subject)
        else:
            required = self._dataset_approvers(action)
        if not required:
            raise GovernanceError("no member can approve this proposal")
        return required

    def _dataset_approvers(self, action: Any) -> frozenset[str]:
        active = frozenset(fp for fp, m in self.members.items() if m.status == "active")
        return self._dataset_parties(action) & active

    def _dataset_parties(self, action: Any) -> frozenset[str]:
        if isinstance(action, RegisterDataset):
            return frozenset({_manifest_owner(action.manifest)} | self.result_recipients())
        if isinstance(action, AddAnalysis):
            owners = {self._dataset(name).owner for name in action.inputs}
            return frozenset(owners | set(action.recipients))
        if isinstance(action, RetireAnalysis):
            analysis = self._analysis(action.name)
            owners = {self._dataset(name).owner for name in analysis.inputs}
            return frozenset(owners | set(analysis.recipients))
        dataset = self._dataset(action.dataset)
        return frozenset({dataset.owner} | self.result_recipients())

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
        if member is None or member.status != "active":
            raise GovernanceError(f"{fingerprint[:12] or '(none)'}... is not an active member")
        if role is not None and role not in member.roles:
            raise GovernanceError(f"{member.identity.name} does not have the {role} role")
        return member

    def _manifest(self, action: RegisterDataset) -> Manifest:
        owner = self._active(_manifest_owner(action.manifest), "data_provider")
        try:
            return Manifest.verify(action.manifest, owner.identity)
        except CleanroomError as exc:
            raise GovernanceError(f"dataset manifest does not verify: {exc}") from exc

    def _check_action(self, action: Any, proposer: str) -> None:
        """Preconditions of an action; checked when proposed and again when accepted."""
        getattr(self, f"_check_{action.type}")(action, proposer)

    def _apply_action(self, action: Any, proposal: Proposal) -> None:
        if isinstance(action, AddAnalysis):
            self._apply_add_analysis(action, proposal)
        else:
            getattr(self, f"_apply_{action.type}")(action, proposal.id)

    def _check_add_member(self, action: AddMember, proposer: str) -> None:
        member = _member_from_body(action, "")
        taken = {*self._enclaves, *self.brokers}
        if self.service is not None:
            taken.add(self.service.fingerprint)
        if member.fingerprint in taken:
            raise GovernanceError("that key is an enclave's, a key broker's or the service's")
        existing = self.members.get(member.fingerprint)
        if existing is not None and existing.status == "declined":
            # a declined invitation is final: the room cannot keep inviting the party
            raise GovernanceError(f"{member.identity.name} declined to join this room")
        if existing is not None and existing.status != "removed":
            raise GovernanceError(f"{member.identity.name} is already a member")

    def _apply_add_member(self, action: AddMember, proposal_id: str) -> None:
        member = _member_from_body(action, proposal_id)  # invited until they accept
        self.members[member.fingerprint] = member

    def _check_remove_member(self, action: RemoveMember, proposer: str) -> None:
        self._active(action.member)
        self.constitution.check_satisfiable(len(self.voters(excluding=action.member)))

    def _apply_remove_member(self, action: RemoveMember, proposal_id: str) -> None:
        """A removed member's data stops being usable at once: no vote of the others
        may keep using a party's data without it. Its consent is withdrawn and its
        key deposits retired, as a consequence of this entry. It keeps two things:
        reading the history up to and including this entry, and revoking consent."""
        removed = self.members[action.member]
        removed.status, removed.removed_at = "removed", self.size  # this entry's position
        for dataset in self.datasets.values():
            if dataset.owner == action.member:
                dataset.consent = False
        for manifest in [m for m, d in self.deposits.items() if d.owner == action.member]:
            del self.deposits[manifest]
        self.contract_version += 1

    def _check_register_dataset(self, action: RegisterDataset, proposer: str) -> None:
        manifest = self._manifest(action)
        if action.rule is not None:
            check_rule(action.rule, manifest.schema)
        if manifest.owner_fingerprint != proposer:
            raise GovernanceError("only a dataset's owner can register it")
        existing = self.datasets.get(manifest.name)
        clash = [
            n for n in self.datasets if n != manifest.name and n.lower() == manifest.name.lower()
        ]
        if clash:
            # SQL resolves names without regard to case: the two could not be told apart
            raise GovernanceError(
                f"dataset {manifest.name!r} differs from {clash[0]!r} only by case; "
                "SQL could not tell them apart"
            )
        if existing is not None:
            if existing.owner != proposer:
                raise GovernanceError(f"dataset {manifest.name!r} belongs to another member")
            digest = canonical_digest(action.manifest)
            if any(v.digest == digest for v in existing.versions):
                raise GovernanceError(f"this version of {manifest.name!r} is already registered")

    def _apply_register_dataset(self, action: RegisterDataset, proposal_id: str) -> None:
        manifest = self._manifest(action)
        dataset = self.datasets.setdefault(
            manifest.name, Dataset(manifest.name, manifest.owner_fingerprint, [])
        )
        dataset.versions.append(
            DatasetVersion(len(dataset.versions) + 1, manifest, canonical_digest(action.manifest))
        )
        if action.rule is not None:
            dataset.rule = action.rule

    def _check_add_analysis(self, action: AddAnalysis, proposer: str) -> None:
        self._active(proposer, "analyst")
        if action.name in self.analyses:
            raise GovernanceError(f"an analysis named {action.name!r} already exists")
        for name in action.inputs:
            if not self._dataset(name).consent:
                raise GovernanceError(f"the owner of {name!r} has revoked consent")
        for fingerprint in action.recipients:
            self._active(fingerprint, "result_recipient")
        # owners approve by voting; a custom rule's approval is checked again at release
        self.check_policy(action.text, action.inputs, action.recipients, action.dp, None)

    def check_policy(
        self,
        text: str,
        inputs: Iterable[str],
        recipients: Iterable[str],
        dp: DpSpec | None,
        approved_by: frozenset[str] | None,
    ) -> str:
        """Check an analysis against its inputs' current rules and budgets; returns
        the SQL to run (thresholds injected). ``approved_by`` None: assume the
        owners approve (the proposal is still open)."""
        sources = {}
        for name in inputs:
            dataset = self._dataset(name)
            if not dataset.versions:
                raise GovernanceError(f"dataset {name!r} has no registered version")
            for fingerprint in recipients:
                allowed = dataset.rule.recipients if dataset.rule is not None else None
                if allowed is not None and fingerprint not in allowed:
                    raise GovernanceError(
                        f"the rule of {name!r} does not allow {fingerprint[:12]}... to receive "
                        "results (strictest wins: the intersection of allowed recipients)"
                    )
            if dataset.budget is not None and dp is None:
                raise GovernanceError(
                    f"{name!r} has a privacy budget: only differentially private analyses "
                    "may read it"
                )
            if dp is not None and dataset.budget is None:
                raise GovernanceError(f"{name!r} has no privacy budget for a DP analysis")
            approved = approved_by is None or dataset.owner in approved_by
            sources[name] = Source(
                name, dataset.versions[-1].manifest.schema, dataset.rule, approved
            )
        memo = self.memo
        digest = _check_digest(text, sources, dp) if memo is not None else ""
        known = memo.get(digest) if memo is not None else None
        if known is not None:
            ok, value = known
            if not ok:
                raise PolicyError(value)
            return value
        try:
            sql = (
                check_dp(text, sources, dp).sql
                if dp is not None
                else check_query(text, sources).sql
            )
        except PolicyError as exc:
            if memo is not None:
                memo.put(digest, ok=False, value=str(exc))
            raise
        if memo is not None:
            memo.put(digest, ok=True, value=sql)
        return sql

    def _apply_add_analysis(self, action: AddAnalysis, proposal: Proposal) -> None:
        self.analyses[action.name] = Analysis(
            action.name,
            action.language,
            action.text,
            hashlib.sha256(action.text.encode("utf-8")).hexdigest(),
            tuple(action.inputs),
            tuple(action.recipients),
            dp=action.dp,
            approved_by=frozenset(proposal.approvals),
        )

    def _check_retire_analysis(self, action: RetireAnalysis, proposer: str) -> None:
        if self._analysis(action.name).status != "active":
            raise GovernanceError(f"analysis {action.name!r} is already retired")

    def _apply_retire_analysis(self, action: RetireAnalysis, proposal_id: str) -> None:
        self.analyses[action.name].status = "retired"

    def _check_set_measurements(self, action: SetMeasurements, proposer: str) -> None:
        return None  # any list is valid, the empty one included (then nothing may run)

    def _apply_set_measurements(self, action: SetMeasurements, proposal_id: str) -> None:
        self.measurements = tuple(sorted({(m.platform, m.value) for m in action.measurements}))
        self.allow_insecure_virtual = action.allow_insecure_virtual
        self.terms = action.terms

    def _owned(self, name: str, proposer: str) -> Dataset:
        dataset = self._dataset(name)
        if dataset.owner != proposer:
            raise GovernanceError("only the dataset's owner can propose this")
        return dataset

    def _check_set_analysis_rule(self, action: SetAnalysisRule, proposer: str) -> None:
        dataset = self._owned(action.dataset, proposer)
        if dataset.versions:
            check_rule(action.rule, dataset.versions[-1].manifest.schema)

    def _apply_set_analysis_rule(self, action: SetAnalysisRule, proposal_id: str) -> None:
        self.datasets[action.dataset].rule = action.rule

    def _check_set_limits(self, action: SetLimits, proposer: str) -> None:
        return None

    def _apply_set_limits(self, action: SetLimits, proposal_id: str) -> None:
        self.limits = action

    def _check_set_privacy_budget(self, action: SetPrivacyBudget, proposer: str) -> None:
        self._owned(action.dataset, proposer)

    def _apply_set_privacy_budget(self, action: SetPrivacyBudget, proposal_id: str) -> None:
        self.datasets[action.dataset].budget = (float(action.epsilon), float(action.delta))

    def _check_restore_consent(self, action: RestoreConsent, proposer: str) -> None:
        if self._owned(action.dataset, proposer).consent:
            raise GovernanceError(f"consent for {action.dataset!r} is not revoked")

    def _apply_restore_consent(self, action: RestoreConsent, proposal_id: str) -> None:
        self.datasets[action.dataset].consent = True

    def _check_change_constitution(self, action: ChangeConstitution, proposer: str) -> None:
        Constitution.from_body(action.constitution).check_satisfiable(len(self.voters()))

    def _apply_change_constitution(self, action: ChangeConstitution, proposal_id: str) -> None:
        self.constitution = Constitution.from_body(action.constitution)

    # -- views ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """A JSON view of everything derived; equal ledgers give equal summaries."""
        return {
            "room": self.room,
            "name": self.name,
            "status": self.status,
            "contract_version": self.contract_version,
            "entries": self.size,
            "constitution": self.constitution.to_json(),
            "members": [
                {
                    "name": m.identity.name,
                    "fingerprint": fp,
                    "roles": sorted(m.roles),
                    "status": m.status,
                }
                for fp, m in sorted(self.members.items())
            ],
            "datasets": [
                {
                    "name": d.name,
                    "owner": d.owner,
                    "consent": d.consent,
                    "versions": [
                        {"version": v.version, "sha256": v.manifest.sha256, "rows": v.manifest.rows}
                        for v in d.versions
                    ],
                    "budget": {
                        "epsilon": d.budget[0],
                        "delta": d.budget[1],
                        "spent": d.spent,
                        "remaining": d.remaining,
                    }
                    if d.budget
                    else None,
                    "rule": d.rule.type if d.rule else None,
                }
                for d in sorted(self.datasets.values(), key=lambda d: d.name)
            ],
            "analyses": [
                {
                    "name": a.name,
                    "digest": a.digest,
                    "inputs": list(a.inputs),
                    "recipients": list(a.recipients),
                    "status": a.status,
                    "dp_epsilon": a.dp.epsilon if a.dp else None,
                }
                for a in sorted(self.analyses.values(), key=lambda a: a.name)
            ],
            "measurements": [{"platform": p, "value": v} for p, v in self.measurements],
            "allow_insecure_virtual": self.allow_insecure_virtual,
            "attestation_terms": (
                self.terms.model_dump(exclude_none=True) if self.terms is not None else None
            ),
            "limits": self.limits.model_dump() if self.limits else None,
            "jobs": {
                status: sum(1 for j in self.jobs.values() if j.status == status)
                for status in ("requested", "running", "succeeded", "failed")
            },
            "proposals": {
                status: sum(1 for p in self.proposals.values() if p.status == status)
                for status in ("open", "accepted", "rejected", "withdrawn", "expired")
            },
        }

    def proposal_views(self) -> list[dict[str, Any]]:
        """Every proposal, oldest first, with its action and ballots."""
        names = {fp: m.identity.name for fp, m in self.members.items()}
        return [
            {
                "id": p.id,
                "type": p.action.type,
                "action": p.action.model_dump(),
                "proposer": names.get(p.proposer, p.proposer),
                "status": p.status,
                "note": p.note,
                "approvers": sorted(names.get(a, a) for a in p.approvers),
                "approvals": sorted(names.get(a, a) for a in p.approvals),
                "rejections": sorted(names.get(a, a) for a in p.rejections),
                "opened_at": p.opened_at,
                "expires_at": p.expires_at,
            }
            for p in sorted(self.proposals.values(), key=lambda p: p.opened_at)
        ]

    def digest(self) -> str:
        return canonical_digest(self.summary())


_FOLD_MEMO: ContextVar[CheckMemo | None] = ContextVar("cleanroom_fold_memo", default=None)


@contextmanager
def folding_with(memo: CheckMemo | None) -> Iterator[None]:
    """Room states folded in this block remember policy check outcomes in ``memo``.
    Only the service's ledger does this, for its own view (see
    :mod:`cleanroom.policy.memo`); every other fold checks afresh."""
    token = _FOLD_MEMO.set(memo)
    try:
        yield
    finally:
        _FOLD_MEMO.reset(token)


def _check_digest(text: str, sources: dict[str, Source], dp: DpSpec | None) -> str:
    return canonical_digest(
        {
            "text": text,
            "dp": dp.model_dump(mode="json") if dp is not None else None,
            "sources": [
                {
                    "name": s.name,
                    "schema": s.schema.to_json(),
                    "rule": s.rule.model_dump(mode="json") if s.rule is not None else None,
                    "approved": s.owner_approved,
                }
                for s in sources.values()
            ],
        }
    )


def fold(
    records: Iterable[tuple[int, Statement]],
    check: SignatureCheck,
    service: PublicIdentity | None = None,
) -> RoomState:
    """Derive a room's state from ``(ledger time, statement)`` pairs in ledger order."""
    state: RoomState | None = None
    for time_ms, statement in records:
        if state is None:
            state = RoomState.genesis(statement, time_ms, check, service)
            state.memo = _FOLD_MEMO.get()
        else:
            state.apply(statement, time_ms, check)
    if state is None:
        raise GovernanceError("an empty ledger has no room")
    return state
