"""Jobs and the release decision (pure).

Jobs: requested -> running (every input's key released: by its owner, or by
the attested broker its owner deposited it with) -> succeeded | failed. The
release decision is one function, :meth:`JobRules.check_key_request`, with
its conditions numbered R1-R11 (docs/adr/0019 and 0020); the state machine,
each owner's key agent, the attested broker and every auditor use it alike.
A key release is re-checked here in full: the evidence verifies at the entry's
time and binds the nonce, enclave key and job; the measurement is approved by
the contract; the analysis is still active; every input's owner consents and
deposited a key that its own release policy lets this platform have; the
nonce was never used. So every auditor re-checks every release offline.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cleanroom.attestation import appraise, check_binding, verify_evidence
from cleanroom.attestation.claims import Claims
from cleanroom.errors import AttestationError, CleanroomError, GovernanceError
from cleanroom.governance.datasets import DatasetRules
from cleanroom.governance.model import (
    Analysis,
    AnalysisStatus,
    Job,
    JobStatus,
    KeyRequestError,
    Member,
)
from cleanroom.governance.statements import (
    JobComplete,
    JobFail,
    JobRequest,
    KeyDeny,
    KeyRelease,
    Statement,
)
from cleanroom.identities.identity import PublicIdentity


class JobRules(DatasetRules):
    """Transitions of jobs: requests, key releases and denials, results."""

    def _request(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: JobRequest = statement.body
        if not author.roles & {"analyst", "result_recipient"}:
            raise GovernanceError("only analysts and result recipients can run analyses")
        analysis = self._analysis(body.analysis)
        if analysis.status != AnalysisStatus.ACTIVE:
            raise GovernanceError(f"analysis {analysis.name!r} is retired")
        if analysis.digest != body.digest:
            raise GovernanceError(f"the text of analysis {analysis.name!r} is not the one expected")
        self._consenting(analysis.inputs)
        counted = self._count_scoring(analysis) if analysis.language == "score" else ()
        job = Job(
            statement.digest,
            analysis.name,
            analysis.digest,
            author.fingerprint,
            time_ms,
            analysis.inputs,
            analysis.recipients,
        )
        job.counted = counted
        self.jobs[statement.digest] = job
        if all(self._dataset(name).versions for name in job.inputs):
            job.waiting_for = self._waiting(job, self.job_inputs(job.id))  # who must release

    def _count_scoring(self, analysis: Analysis) -> tuple[tuple[str, str], ...]:
        """Count a scoring job and the rows it will score against the room's caps;
        refuses a job that would pass either (a failed or refused job still counts).
        Returns the versions counted: the job's keys are released for those only."""
        versions = [self._dataset(name).versions[-1] for name in analysis.inputs]
        rows = sum(v.manifest.rows for v in versions if v.manifest.model is None)  # not the model
        limits = self.limits
        jobs_cap = limits.max_scoring_jobs if limits is not None else None
        rows_cap = limits.max_scored_rows if limits is not None else None
        if jobs_cap is not None and self.scoring_jobs + 1 > jobs_cap:
            raise GovernanceError(f"the room allows {jobs_cap} scoring jobs, and all have run")
        if rows_cap is not None and self.scored_rows + rows > rows_cap:
            raise GovernanceError(
                f"the room caps scored rows at {rows_cap}: this job would score {rows} more "
                f"after {self.scored_rows}"
            )
        self.scoring_jobs += 1
        self.scored_rows += rows
        return tuple((name, v.digest) for name, v in zip(analysis.inputs, versions, strict=True))

    def _check_release(self, job: Job, claims: Claims) -> list[tuple[str, str]]:
        # R5 the job still waits for keys
        if job.status != JobStatus.REQUESTED:
            raise GovernanceError(f"job {job.id[:12]}... is {job.status}: keys go to new jobs only")
        # R6 the contract approves the platform, measurement and terms (a refusal of
        # the room's, not a fault of the request: a releaser denies it, signed)
        try:
            appraise(claims, self.release_policy())
        except AttestationError as exc:
            raise GovernanceError(str(exc)) from exc
        # R7 the analysis is still the approved, active text the job named
        analysis = self._analysis(job.analysis)
        if analysis.status != AnalysisStatus.ACTIVE or analysis.digest != job.analysis_digest:
            raise GovernanceError(f"analysis {job.analysis!r} is no longer approved")
        # R8 every input's owner still consents
        self._consenting(job.inputs)
        # R9 the inputs' rules still admit the analysis
        self.check_policy(
            analysis.text,
            analysis.inputs,
            analysis.recipients,
            analysis.dp,
            analysis.approved_by,
            language=analysis.language,
        )
        self._check_budget(job, analysis)  # R10
        inputs = self.job_inputs(job.id)
        if job.counted and tuple(inputs) != job.counted:  # R9 a scoring job's counted rows
            raise GovernanceError(
                "an input has a new version since this scoring job was counted against the "
                "room's caps: request a new job"
            )
        self._check_deposits(inputs, claims)  # R11
        return inputs

    def _owner_release(self, statement: Statement, author: Member, time_ms: int) -> None:
        self._release(statement, time_ms, releaser=author.fingerprint)

    def _broker_release(self, statement: Statement, broker: PublicIdentity, time_ms: int) -> None:
        self._release(statement, time_ms, releaser=broker.fingerprint)

    def _broker_deny(self, statement: Statement, broker: PublicIdentity, time_ms: int) -> None:
        body: KeyDeny = statement.body
        if not self.releasable(self.job(body.job), broker.fingerprint):
            raise GovernanceError("a key broker can deny only jobs that need its keys")
        self._deny(statement, time_ms)

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
        if job.status != JobStatus.REQUESTED:
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
            if body.nonce in self.nonces:
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
            self.nonces.add(body.nonce)
        job.input_keys.update(sealed)
        job.released = tuple(i for i in inputs if i in {*job.released, *named})
        dp = self.analyses[job.analysis].dp
        if dp is not None:
            for name, _ in named:
                self.datasets[name].spent += float(dp.epsilon)
        job.waiting_for = self._waiting(job, inputs)
        if len(job.released) == len(inputs):
            job.status = JobStatus.RUNNING

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

    def _fail(self, job: Job, reason: str, time_ms: int, *, allowed: tuple[JobStatus, ...]) -> None:
        if job.status not in allowed:
            raise GovernanceError(f"job {job.id[:12]}... is {job.status}")
        job.status, job.reason, job.finished_at = JobStatus.FAILED, reason, time_ms

    def _deny(self, statement: Statement, time_ms: int) -> None:
        body: KeyDeny = statement.body
        self._fail(
            self.job(body.job),
            f"key release denied: {body.reason}",
            time_ms,
            allowed=(JobStatus.REQUESTED,),
        )

    def _service_fail(self, statement: Statement, time_ms: int) -> None:
        body: JobFail = statement.body
        self._fail(
            self.job(body.job),
            body.reason,
            time_ms,
            allowed=(JobStatus.REQUESTED, JobStatus.RUNNING),
        )

    def _enclave_fail(self, statement: Statement, job: Job, time_ms: int) -> None:
        body: JobFail = statement.body
        if body.job != job.id:
            raise GovernanceError("an enclave reports on its own job only")
        self._fail(job, body.reason, time_ms, allowed=(JobStatus.REQUESTED, JobStatus.RUNNING))

    def _complete(self, statement: Statement, job: Job, time_ms: int) -> None:
        body: JobComplete = statement.body
        if body.job != job.id:
            raise GovernanceError("an enclave reports on its own job only")
        if job.status != JobStatus.RUNNING:
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
        job.status, job.finished_at = JobStatus.SUCCEEDED, time_ms
        job.output = {
            **body.output.model_dump(),
            "duration_ms": body.duration_ms,
            "phases": dict(body.phases),
        }
        if body.confinement is not None:
            job.output["confinement"] = body.confinement.model_dump()
        job.sealed_keys = {k.recipient: k.sealed for k in body.sealed_keys}
