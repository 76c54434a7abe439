"""Constitutions: who must approve a proposal, and when it is decided (pure).

Rules, chosen when a room is created and changed only by a proposal that every
voting member approves under the rule in force:

* ``default``: a proposal that uses datasets needs every owner of an affected
  dataset and every result recipient; a room-level change (members,
  constitution, runtime measurements) needs every voting member. Any required
  approver can veto.
* ``unanimity``: every voting member approves; any of them can veto.
* ``majority``: more than half of the voting members approve.
* ``threshold``: ``k`` of the voting members approve.

A voting member is an active member with a role other than observer alone.
An empty approver set is an error, never an automatic pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cleanroom.errors import GovernanceError
from cleanroom.governance.statements import ConstitutionBody

Outcome = Literal["accepted", "rejected", "open"]
DATASET_ACTIONS = frozenset(
    {
        "register_dataset",
        "add_analysis",
        "retire_analysis",
        "set_privacy_budget",
        "set_analysis_rule",
        "restore_consent",
    }
)
ROOM_ACTIONS = frozenset(
    {"add_member", "remove_member", "change_constitution", "set_measurements", "set_limits"}
)


@dataclass(frozen=True)
class Constitution:
    rule: Literal["default", "unanimity", "majority", "threshold"]
    k: int | None
    proposal_ttl_ms: int

    @classmethod
    def from_body(cls, body: ConstitutionBody) -> Constitution:
        if body.rule == "threshold" and body.k is None:
            raise GovernanceError("a threshold constitution needs k")
        if body.rule != "threshold" and body.k is not None:
            raise GovernanceError(f"k is only meaningful for a threshold rule, not {body.rule}")
        return cls(body.rule, body.k, body.proposal_ttl_hours * 3_600_000)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "rule": self.rule,
            "proposal_ttl_hours": self.proposal_ttl_ms // 3_600_000,
        }
        if self.k is not None:
            out["k"] = self.k
        return out

    def check_satisfiable(self, voters: int) -> None:
        """Refuse a constitution that no set of ballots could ever satisfy."""
        if voters == 0:
            raise GovernanceError("the room would have no voting member")
        if self.rule == "threshold" and self.k is not None and self.k > voters:
            raise GovernanceError(
                f"threshold k={self.k} cannot be met by {voters} voting member(s)"
            )

    def decide(
        self, approvers: frozenset[str], approvals: set[str], rejections: set[str]
    ) -> Outcome:
        if not approvers:
            raise GovernanceError("no approver can decide this proposal")
        n, yes, no = len(approvers), len(approvals & approvers), len(rejections & approvers)
        if self.rule in ("default", "unanimity"):
            if no:
                return "rejected"  # any required approver can veto
            return "accepted" if yes == n else "open"
        if self.rule == "majority":
            if 2 * yes > n:
                return "accepted"
            return "rejected" if 2 * (n - no) <= n else "open"
        k = self.k or 0
        if yes >= k:
            return "accepted"
        return "rejected" if n - no < k else "open"
