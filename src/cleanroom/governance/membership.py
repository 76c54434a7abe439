"""Membership: invitations, acceptance, declines and removal (pure).

Members: invited -> active (member.accept) | declined (member.decline, final;
a room still being formed is then declined for good); active -> removed (an
accepted remove_member). A removed member may still sign consent.revoke for
its own datasets, nothing else. A removed member's data stops being usable at
once: its consent is withdrawn and its key deposits retired by the removal.
"""

from __future__ import annotations

from cleanroom.errors import GovernanceError
from cleanroom.governance.model import (
    Member,
    MemberStatus,
    Proposal,
    RoomBase,
    RoomStatus,
    member_from_body,
)
from cleanroom.governance.statements import (
    AddMember,
    MemberAccept,
    MemberDecline,
    RemoveMember,
    Statement,
)


class MembershipRules(RoomBase):
    """Transitions of members and of the room's own status."""

    def _maybe_activate(self) -> None:
        if self.status == RoomStatus.PENDING and all(
            m.status == MemberStatus.ACTIVE for m in self.members.values()
        ):
            self.status = RoomStatus.ACTIVE
            self.contract_version = 1

    def _accept(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: MemberAccept = statement.body
        if body.invitation != author.invitation:
            raise GovernanceError("acceptance names a different invitation than the member's")
        author.status = MemberStatus.ACTIVE
        self._maybe_activate()

    def _decline(self, statement: Statement, author: Member, time_ms: int) -> None:
        """The invitee turns its invitation down. A room still being formed can then
        never become active (every listed member must accept): it is ``declined``,
        for good, and takes no further statement. In an active room (an invitation
        by ``add_member``) only the invitee's membership ends."""
        body: MemberDecline = statement.body
        if body.invitation != author.invitation:
            raise GovernanceError("the decline names a different invitation than the member's")
        author.status = MemberStatus.DECLINED
        if self.status == RoomStatus.PENDING:
            self.status = RoomStatus.DECLINED

    def _check_add_member(self, action: AddMember, proposer: str) -> None:
        member = member_from_body(action, "")
        taken = {*self._enclaves, *self.brokers}
        if self.service is not None:
            taken.add(self.service.fingerprint)
        if member.fingerprint in taken:
            raise GovernanceError("that key is an enclave's, a key broker's or the service's")
        existing = self.members.get(member.fingerprint)
        if existing is not None and existing.status == MemberStatus.DECLINED:
            # a declined invitation is final: the room cannot keep inviting the party
            raise GovernanceError(f"{member.identity.name} declined to join this room")
        if existing is not None and existing.status != MemberStatus.REMOVED:
            raise GovernanceError(f"{member.identity.name} is already a member")

    def _apply_add_member(self, action: AddMember, proposal: Proposal) -> None:
        member = member_from_body(action, proposal.id)  # invited until they accept
        self.members[member.fingerprint] = member

    def _check_remove_member(self, action: RemoveMember, proposer: str) -> None:
        self._active(action.member)
        self.constitution.check_satisfiable(len(self.voters(excluding=action.member)))

    def _apply_remove_member(self, action: RemoveMember, proposal: Proposal) -> None:
        """A removed member's data stops being usable at once: no vote of the others
        may keep using a party's data without it. Its consent is withdrawn and its
        key deposits retired, as a consequence of this entry. It keeps two things:
        reading the history up to and including this entry, and revoking consent."""
        removed = self.members[action.member]
        removed.status, removed.removed_at = (
            MemberStatus.REMOVED,
            self.size,
        )  # this entry's position
        for dataset in self.datasets.values():
            if dataset.owner == action.member:
                dataset.consent = False
        for manifest in [m for m, d in self.deposits.items() if d.owner == action.member]:
            del self.deposits[manifest]
        self.contract_version += 1
