"""The state digest auditors compare (pure).

Two parties who verified the same ledger hold the same room state; they show
it by comparing :func:`state_digest`. The digest covers an explicit record of
every field a later decision reads (members and their standing, the contract,
datasets with their budgets and rules, deposits and the brokers holding them,
analyses with their approvals, jobs with their enclaves and released inputs,
proposals with their ballots, the nonces spent), so two states that could
decide anything differently never share a digest. It is kept apart from the
API views (:mod:`cleanroom.governance.views`): a cosmetic change to a view
never changes what auditors compare, and a change here is a change of the
consensus format, made on purpose (bump :data:`FORMAT`).
"""

from __future__ import annotations

from typing import Any

from cleanroom.crypto.canonical import canonical_digest
from cleanroom.governance.model import RoomBase

FORMAT = "cleanroom-state-digest/1"


def consensus_record(state: RoomBase) -> dict[str, Any]:
    """Everything in ``state`` that a later decision reads, as canonical JSON data."""
    return {
        "format": FORMAT,
        "room": state.room,
        "name": state.name,
        "status": str(state.status),
        "creator": state.creator,
        "contract_version": state.contract_version,
        "size": state.size,
        "last_time": state.last_time,
        "constitution": state.constitution.to_json(),
        "service": state.service.fingerprint if state.service is not None else None,
        "members": {
            fp: {
                "roles": sorted(m.roles),
                "status": str(m.status),
                "invitation": m.invitation,
                "removed_at": m.removed_at,
                "withdrawn": sorted(m.withdrawn),
            }
            for fp, m in state.members.items()
        },
        "measurements": [list(pair) for pair in state.measurements],
        "allow_insecure_virtual": state.allow_insecure_virtual,
        "terms": state.terms.model_dump(mode="json") if state.terms is not None else None,
        "limits": (
            state.limits.model_dump(mode="json", exclude_none=True)
            if state.limits is not None
            else None
        ),
        "datasets": {
            name: {
                "owner": d.owner,
                "consent": d.consent,
                "versions": [v.digest for v in d.versions],
                "budget": list(d.budget) if d.budget is not None else None,
                "spent": d.spent,
                "rule": d.rule.model_dump(mode="json") if d.rule is not None else None,
            }
            for name, d in state.datasets.items()
        },
        "deposits": {
            manifest: {
                "dataset": d.dataset,
                "owner": d.owner,
                "sealed_key": d.sealed_key,
                "platforms": sorted(d.platforms),
                "measurements": sorted(d.measurements) if d.measurements is not None else None,
                "broker": d.broker.fingerprint if d.broker is not None else None,
            }
            for manifest, d in state.deposits.items()
        },
        "brokers": sorted(state.brokers),
        "analyses": {
            name: {
                "digest": a.digest,
                "language": a.language,
                "inputs": list(a.inputs),
                "recipients": list(a.recipients),
                "status": str(a.status),
                "dp": a.dp.model_dump(mode="json") if a.dp is not None else None,
                "approved_by": sorted(a.approved_by),
                "version": a.version,
                "superseded": list(a.superseded),
            }
            for name, a in state.analyses.items()
        },
        "jobs": {
            job_id: {
                "analysis": j.analysis,
                "analysis_digest": j.analysis_digest,
                "requester": j.requester,
                "requested_at": j.requested_at,
                "status": str(j.status),
                "enclave": j.enclave.fingerprint if j.enclave is not None else None,
                "platform": j.platform,
                "measurement": j.measurement,
                "nonce": j.nonce,
                "expected": [list(i) for i in j.expected],
                "released": [list(i) for i in j.released],
                "input_keys": j.input_keys,
                "sealed_keys": j.sealed_keys,
                "output": j.output,
                "reason": j.reason,
                "finished_at": j.finished_at,
                # a scoring job's counted versions: only where there are some, so the
                # digest of every other job (and of rooms from before scoring) is unchanged
                **({"counted": [list(i) for i in j.counted]} if j.counted else {}),
            }
            for job_id, j in state.jobs.items()
        },
        "proposals": {
            pid: {
                # unset scoring caps are left out: a set_limits from before they existed
                # keeps its digest
                "action": p.action.model_dump(
                    mode="json", exclude_none=p.action.type == "set_limits"
                ),
                "proposer": p.proposer,
                "status": str(p.status),
                "approvers": sorted(p.approvers),
                "approvals": sorted(p.approvals),
                "rejections": sorted(p.rejections),
                "expires_at": p.expires_at,
                "note": p.note,
            }
            for pid, p in state.proposals.items()
        },
        "nonces": sorted(state.nonces),
        # the scoring caps' counts, once a scoring job was requested (see "counted")
        **(
            {"scoring": [state.scoring_jobs, state.scored_rows]}
            if state.scoring_jobs or state.scored_rows
            else {}
        ),
    }


def state_digest(state: RoomBase) -> str:
    """SHA-256 of the canonical (RFC 8785) consensus record of ``state``."""
    return canonical_digest(consensus_record(state))
