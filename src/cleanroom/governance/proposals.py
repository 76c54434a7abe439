"""Proposals, ballots and the contract-wide actions (pure).

Proposals: open -> accepted | rejected | withdrawn | expired. Approvers are
fixed when a proposal opens (who they are depends on the constitution and the
action). An accepted proposal is applied at the ledger position of the ballot
that decided it; if it no longer applies then (its preconditions are checked
again), it is rejected with the reason recorded. The actions that concern the
whole contract (constitution, measurements, limits) live here; the others with
their concern, and :data:`cleanroom.governance.state.ACTIONS` names each
action's one check and one apply.
"""

from __future__ import annotations

import heapq
from typing import Any

from cleanroom.errors import GovernanceError
from cleanroom.governance.constitution import DATASET_ACTIONS, Constitution
from cleanroom.governance.model import (
    Member,
    MemberStatus,
    Proposal,
    ProposalStatus,
    RoomBase,
    manifest_owner,
)
from cleanroom.governance.statements import (
    AddAnalysis,
    Ballot,
    ChangeConstitution,
    ProposalWithdraw,
    RegisterDataset,
    RemoveMember,
    RetireAnalysis,
    SetLimits,
    SetMeasurements,
    Statement,
)


class ProposalRules(RoomBase):
    """Transitions of proposals, and the contract-wide actions."""

    def _check_action(self, action: Any, proposer: str) -> None:
        raise NotImplementedError  # RoomState: each action's check, named in ACTIONS

    def _apply_action(self, action: Any, proposal: Proposal) -> None:
        raise NotImplementedError  # RoomState: each action's apply, named in ACTIONS

    def _expire(self, time_ms: int) -> None:
        # a heap by deadline: O(log n) per expiry, however many proposals are open
        while self._deadlines and self._deadlines[0][0] <= time_ms:
            _, pid = heapq.heappop(self._deadlines)
            if self.proposals[pid].status == ProposalStatus.OPEN:
                self.proposals[pid].status = ProposalStatus.EXPIRED

    def _propose(self, statement: Statement, author: Member, time_ms: int) -> None:
        action = statement.body.action
        if not author.votes:
            raise GovernanceError(f"{author.identity.name} is an observer and cannot propose")
        self._check_action(action, author.fingerprint)
        # under a threshold rule the approvers (the voters) always number at least k:
        # genesis, removals and constitution changes check that the rule stays satisfiable
        approvers = self.approvers(action)
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
        if proposal.status != ProposalStatus.OPEN:
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
            proposal.status = ProposalStatus.REJECTED
            return
        try:
            self._check_action(proposal.action, proposal.proposer)
        except GovernanceError as exc:
            proposal.status, proposal.note = ProposalStatus.REJECTED, f"no longer applicable: {exc}"
            return
        proposal.status = ProposalStatus.ACCEPTED
        self._apply_action(proposal.action, proposal)
        self.contract_version += 1

    def _withdraw(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: ProposalWithdraw = statement.body
        proposal = self._open_proposal(body.proposal)
        if proposal.proposer != author.fingerprint:
            raise GovernanceError("only the proposer can withdraw a proposal")
        proposal.status = ProposalStatus.WITHDRAWN

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
        active = frozenset(fp for fp, m in self.members.items() if m.status == MemberStatus.ACTIVE)
        return self._dataset_parties(action) & active

    def _dataset_parties(self, action: Any) -> frozenset[str]:
        if isinstance(action, RegisterDataset):
            return frozenset({manifest_owner(action.manifest)} | self.result_recipients())
        if isinstance(action, AddAnalysis):
            owners = {self._dataset(name).owner for name in action.inputs}
            return frozenset(owners | set(action.recipients))
        if isinstance(action, RetireAnalysis):
            analysis = self._analysis(action.name)
            owners = {self._dataset(name).owner for name in analysis.inputs}
            return frozenset(owners | set(analysis.recipients))
        dataset = self._dataset(action.dataset)
        return frozenset({dataset.owner} | self.result_recipients())

    def _check_change_constitution(self, action: ChangeConstitution, proposer: str) -> None:
        Constitution.from_body(action.constitution).check_satisfiable(len(self.voters()))

    def _apply_change_constitution(self, action: ChangeConstitution, proposal: Proposal) -> None:
        self.constitution = Constitution.from_body(action.constitution)

    def _check_set_measurements(self, action: SetMeasurements, proposer: str) -> None:
        return None  # any list is valid, the empty one included (then nothing may run)

    def _apply_set_measurements(self, action: SetMeasurements, proposal: Proposal) -> None:
        self.measurements = tuple(sorted({(m.platform, m.value) for m in action.measurements}))
        self.allow_insecure_virtual = action.allow_insecure_virtual
        self.terms = action.terms

    def _check_set_limits(self, action: SetLimits, proposer: str) -> None:
        return None

    def _apply_set_limits(self, action: SetLimits, proposal: Proposal) -> None:
        self.limits = action
