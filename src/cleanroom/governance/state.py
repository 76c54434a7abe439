"""The room's state machine: one statement at a time, over the state the ledger
derived so far (pure).

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
kind-specific rules, in the one handler :data:`TRANSITIONS` names for that
author and kind.

The rules live one concern to a module: :mod:`~cleanroom.governance.membership`,
:mod:`~cleanroom.governance.proposals`, :mod:`~cleanroom.governance.datasets`
(datasets, analyses, deposits) and :mod:`~cleanroom.governance.jobs` (jobs and
the release decision, R1-R11). What a proposal's action checks and applies is
named once, in :data:`ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

from cleanroom.errors import GovernanceError
from cleanroom.governance.consensus import state_digest
from cleanroom.governance.constitution import Constitution
from cleanroom.governance.jobs import JobRules
from cleanroom.governance.membership import MembershipRules
from cleanroom.governance.model import (
    Job,
    Member,
    MemberStatus,
    Proposal,
    RoomStatus,
    SignatureCheck,
    member_from_body,
)
from cleanroom.governance.proposals import ProposalRules
from cleanroom.governance.statements import RoomCreate, Statement
from cleanroom.identities.identity import PublicIdentity
from cleanroom.policy.memo import CheckMemo


class Author(StrEnum):
    """Who may sign statements in a room, besides the creator's ``room.create``."""

    MEMBER = "a member"
    SERVICE = "the ledger service"
    BROKER = "a key broker"
    ENCLAVE = "an enclave"


class RoomState(JobRules, MembershipRules, ProposalRules):
    """A room's state: the rules of every concern, and the dispatch of statements."""

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
            member = member_from_body(member_body, statement.digest)
            if member.fingerprint in members:
                raise GovernanceError(f"member {member.identity.name} is listed twice")
            members[member.fingerprint] = member
        creator = members.get(statement.author)
        if creator is None:
            raise GovernanceError("the room's creator must be one of its members")
        check(statement.parsed, creator.identity.signing_key)
        constitution = Constitution.from_body(body.constitution)
        constitution.check_satisfiable(sum(1 for m in members.values() if m.roles - {"observer"}))
        creator.status = MemberStatus.ACTIVE  # creating the room is the creator's acceptance
        state = cls(
            statement.room, body.name, constitution, creator.fingerprint, members, service=service
        )
        state._record(statement, time_ms)
        state._maybe_activate()
        return state

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
            check(statement.parsed, self.service.signing_key)
            _handler(SERVICE_TRANSITIONS, Author.SERVICE, statement.kind)(self, statement, time_ms)
        elif statement.author in self._enclaves:
            job = self.jobs[self._enclaves[statement.author]]
            if job.enclave is None:  # cannot happen: enclaves are registered with their job
                raise GovernanceError("no enclave key recorded for this job")
            check(statement.parsed, job.enclave.signing_key)
            _handler(ENCLAVE_TRANSITIONS, Author.ENCLAVE, statement.kind)(
                self, statement, job, time_ms
            )
        elif statement.author in self.brokers:
            broker = self.brokers[statement.author]
            check(statement.parsed, broker.signing_key)
            _handler(BROKER_TRANSITIONS, Author.BROKER, statement.kind)(
                self, statement, broker, time_ms
            )
        else:
            author = self._member_author(statement)
            check(statement.parsed, author.identity.signing_key)
            _handler(MEMBER_TRANSITIONS, Author.MEMBER, statement.kind)(
                self, statement, author, time_ms
            )
        self._record(statement, time_ms)

    def _member_author(self, statement: Statement) -> Member:
        """(3) The member signing ``statement``, if its standing lets it make it."""
        author = self.members.get(statement.author)
        if author is None:
            raise GovernanceError("statement author is not a member of this room")
        if self.status == RoomStatus.DECLINED:
            raise GovernanceError("an invitee declined this room: it can never become active")
        if statement.kind in ("member.accept", "member.decline"):
            if author.status != MemberStatus.INVITED:
                raise GovernanceError(f"{author.identity.name} has no pending invitation")
        elif statement.kind == "consent.revoke" and author.status == MemberStatus.REMOVED:
            pass  # a removed owner can always still withdraw its own data (see _revoke)
        elif author.status != MemberStatus.ACTIVE:
            raise GovernanceError(
                f"{author.identity.name} is not an active member ({author.status})"
            )
        elif self.status != RoomStatus.ACTIVE:
            raise GovernanceError("the room is not active yet: members must accept first")
        return author

    def _check_action(self, action: Any, proposer: str) -> None:
        """Preconditions of an action; checked when proposed and again when accepted."""
        _action_rules(action).check(self, action, proposer)

    def _apply_action(self, action: Any, proposal: Proposal) -> None:
        _action_rules(action).apply(self, action, proposal)

    def digest(self) -> str:
        """The digest auditors compare (:mod:`cleanroom.governance.consensus`)."""
        return state_digest(self)


_T = TypeVar("_T")

# -- the transition table: for each author, the one handler of each statement kind --

ServiceTransition = Callable[[RoomState, Statement, int], None]
EnclaveTransition = Callable[[RoomState, Statement, Job, int], None]
BrokerTransition = Callable[[RoomState, Statement, PublicIdentity, int], None]
MemberTransition = Callable[[RoomState, Statement, Member, int], None]

SERVICE_TRANSITIONS: Final[Mapping[str, ServiceTransition]] = MappingProxyType(
    {"key.deny": RoomState._deny, "job.fail": RoomState._service_fail}
)
ENCLAVE_TRANSITIONS: Final[Mapping[str, EnclaveTransition]] = MappingProxyType(
    {"job.complete": RoomState._complete, "job.fail": RoomState._enclave_fail}
)
BROKER_TRANSITIONS: Final[Mapping[str, BrokerTransition]] = MappingProxyType(
    {"key.release": RoomState._broker_release, "key.deny": RoomState._broker_deny}
)
MEMBER_TRANSITIONS: Final[Mapping[str, MemberTransition]] = MappingProxyType(
    {
        "member.accept": RoomState._accept,
        "member.decline": RoomState._decline,
        "proposal.create": RoomState._propose,
        "ballot": RoomState._ballot,
        "proposal.withdraw": RoomState._withdraw,
        "consent.revoke": RoomState._revoke,
        "key.deposit": RoomState._deposit,
        "job.request": RoomState._request,
        "key.release": RoomState._owner_release,
        "key.deny": RoomState._owner_deny,
    }
)
TRANSITIONS: Final[Mapping[Author, Mapping[str, Callable[..., None]]]] = MappingProxyType(
    {
        Author.SERVICE: SERVICE_TRANSITIONS,
        Author.ENCLAVE: ENCLAVE_TRANSITIONS,
        Author.BROKER: BROKER_TRANSITIONS,
        Author.MEMBER: MEMBER_TRANSITIONS,
    }
)


def _handler(table: Mapping[str, _T], author: Author, kind: str) -> _T:
    handler = table.get(kind)
    if handler is None:  # an allow-list: a kind no table names is refused
        raise GovernanceError(f"{author} cannot make {kind} statements in a created room")
    return handler


# -- the action table: for each proposal action, its one check and its one apply --


class ActionRules(NamedTuple):
    check: Callable[[RoomState, Any, str], None]  # when proposed and again when accepted
    apply: Callable[[RoomState, Any, Proposal], None]  # when accepted


ACTIONS: Final[Mapping[str, ActionRules]] = MappingProxyType(
    {
        "add_member": ActionRules(RoomState._check_add_member, RoomState._apply_add_member),
        "remove_member": ActionRules(
            RoomState._check_remove_member, RoomState._apply_remove_member
        ),
        "register_dataset": ActionRules(
            RoomState._check_register_dataset, RoomState._apply_register_dataset
        ),
        "set_analysis_rule": ActionRules(
            RoomState._check_set_analysis_rule, RoomState._apply_set_analysis_rule
        ),
        "add_analysis": ActionRules(RoomState._check_add_analysis, RoomState._apply_add_analysis),
        "retire_analysis": ActionRules(
            RoomState._check_retire_analysis, RoomState._apply_retire_analysis
        ),
        "set_measurements": ActionRules(
            RoomState._check_set_measurements, RoomState._apply_set_measurements
        ),
        "set_privacy_budget": ActionRules(
            RoomState._check_set_privacy_budget, RoomState._apply_set_privacy_budget
        ),
        "set_limits": ActionRules(RoomState._check_set_limits, RoomState._apply_set_limits),
        "change_constitution": ActionRules(
            RoomState._check_change_constitution, RoomState._apply_change_constitution
        ),
        "restore_consent": ActionRules(
            RoomState._check_restore_consent, RoomState._apply_restore_consent
        ),
    }
)


def _action_rules(action: Any) -> ActionRules:
    rules = ACTIONS.get(getattr(action, "type", None) or "")
    if rules is None:  # an allow-list: an action no entry names is refused
        raise GovernanceError("the proposal's action is not one this room knows")
    return rules


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
