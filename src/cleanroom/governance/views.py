"""What members read of a room's state: JSON views for the API and the CLI (pure).

Views are for people and may change shape between versions; nothing compares
them. What auditors compare is :func:`cleanroom.governance.consensus.state_digest`,
a record kept apart so that a cosmetic change here never changes it."""

from __future__ import annotations

from typing import Any

from cleanroom.governance.model import Job, JobStatus, ProposalStatus, RoomBase


def room_view(state: RoomBase) -> dict[str, Any]:
    """The room as members read it (``GET /v1/rooms/{room}``): names, counts, budgets."""
    return {
        "room": state.room,
        "name": state.name,
        "status": state.status,
        "contract_version": state.contract_version,
        "entries": state.size,
        "constitution": state.constitution.to_json(),
        "members": [
            {
                "name": m.identity.name,
                "fingerprint": fp,
                "roles": sorted(m.roles),
                "status": m.status,
            }
            for fp, m in sorted(state.members.items())
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
            for d in sorted(state.datasets.values(), key=lambda d: d.name)
        ],
        "analyses": [
            {
                "name": a.name,
                "digest": a.digest,
                "version": a.version,
                "inputs": list(a.inputs),
                "recipients": list(a.recipients),
                "status": a.status,
                "dp_epsilon": a.dp.epsilon if a.dp else None,
            }
            for a in sorted(state.analyses.values(), key=lambda a: a.name)
        ],
        "measurements": [{"platform": p, "value": v} for p, v in state.measurements],
        "allow_insecure_virtual": state.allow_insecure_virtual,
        "attestation_terms": (
            state.terms.model_dump(exclude_none=True) if state.terms is not None else None
        ),
        "limits": state.limits.model_dump(exclude_none=True) if state.limits else None,
        "scoring": {"jobs": state.scoring_jobs, "rows": state.scored_rows},  # against the caps
        "jobs": {
            status.value: sum(1 for j in state.jobs.values() if j.status == status)
            for status in JobStatus
        },
        "proposals": {
            status.value: sum(1 for p in state.proposals.values() if p.status == status)
            for status in ProposalStatus
        },
    }


def proposal_views(state: RoomBase) -> list[dict[str, Any]]:
    """Every proposal, oldest first, with its action and ballots."""
    names = {fp: m.identity.name for fp, m in state.members.items()}
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
        for p in sorted(state.proposals.values(), key=lambda p: p.opened_at)
    ]


def job_view(job: Job, names: dict[str, str]) -> dict[str, Any]:
    """One job as members read it; ``names`` maps fingerprints to member names."""
    return {
        "id": job.id,
        "analysis": job.analysis,
        "analysis_digest": job.analysis_digest,
        "requester": names.get(job.requester, job.requester),
        "requested_at": job.requested_at,
        "status": job.status,
        "inputs": list(job.inputs),
        "recipients": [names.get(r, r) for r in job.recipients],
        "enclave": job.enclave.fingerprint if job.enclave else None,
        "waiting_for": [names.get(w, w) for w in job.waiting_for],
        "platform": job.platform,
        "measurement": job.measurement,
        "assurance": job.assurance,
        "output": job.output,
        "reason": job.reason,
        "finished_at": job.finished_at,
    }
