"""Datasets, analyses and key deposits (pure).

A dataset is registered by its owner's signed manifest; its rule, privacy
budget and consent are the owner's to set. An analysis is approved text whose
policy check (:func:`RoomBase.check_policy`) passes against its inputs' current
rules. A key deposit names a manifest its author signed and, for keys sealed to
an attested key broker, the broker's offer, re-checked here on deposit
(:meth:`DatasetRules.check_broker`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cleanroom.attestation import appraise, verify_evidence
from cleanroom.attestation.claims import Claims
from cleanroom.attestation.evidence import check_broker_binding
from cleanroom.crypto.canonical import canonical_digest
from cleanroom.datasets.manifest import Manifest
from cleanroom.errors import CleanroomError, GovernanceError, PolicyError
from cleanroom.governance.model import (
    Analysis,
    AnalysisStatus,
    Dataset,
    DatasetVersion,
    Deposit,
    Member,
    MemberStatus,
    Proposal,
    ProposalStatus,
    RoomBase,
    manifest_owner,
)
from cleanroom.governance.statements import (
    AddAnalysis,
    ConsentRevoke,
    KeyDeposit,
    RegisterDataset,
    RestoreConsent,
    RetireAnalysis,
    SetAnalysisRule,
    SetPrivacyBudget,
    Statement,
)
from cleanroom.identities.identity import PublicIdentity
from cleanroom.policy.rules import DpSpec, check_rule

if TYPE_CHECKING:
    from cleanroom.policy.check import Source


class DatasetRules(RoomBase):
    """Transitions of datasets, analyses and deposits."""

    def _revoke(self, statement: Statement, author: Member, time_ms: int) -> None:
        body: ConsentRevoke = statement.body
        dataset = self._dataset(body.dataset)
        if dataset.owner != author.fingerprint:
            raise GovernanceError("only the dataset's owner can revoke consent")
        if author.status == MemberStatus.REMOVED:
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
                and proposal.status not in (ProposalStatus.REJECTED, ProposalStatus.WITHDRAWN)
                and canonical_digest(action.manifest) == digest
            ):
                payload = action.manifest.get("payload")
                name = payload.get("name") if isinstance(payload, dict) else None
                found.add((str(name), manifest_owner(action.manifest)))
        return found

    def _ciphertext_proposed(self, sha256: str, *, excluding: str) -> bool:
        """Whether a member other than ``excluding`` has an open registration of a
        manifest naming the ciphertext ``sha256``."""
        for proposal in self.proposals.values():
            action = proposal.action
            if (
                isinstance(action, RegisterDataset)
                and proposal.status == ProposalStatus.OPEN
                and proposal.proposer != excluding
            ):
                payload = action.manifest.get("payload")
                ciphertext = payload.get("ciphertext") if isinstance(payload, dict) else None
                if isinstance(ciphertext, dict) and ciphertext.get("sha256") == sha256:
                    return True
        return False

    def _manifest(self, action: RegisterDataset) -> Manifest:
        owner = self._active(manifest_owner(action.manifest), "data_provider")
        try:
            return Manifest.verify(action.manifest, owner.identity)
        except CleanroomError as exc:
            raise GovernanceError(f"dataset manifest does not verify: {exc}") from exc

    def _owned(self, name: str, proposer: str) -> Dataset:
        dataset = self._dataset(name)
        if dataset.owner != proposer:
            raise GovernanceError("only the dataset's owner can propose this")
        return dataset

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
        taken = [
            d.name
            for d in self.datasets.values()
            if d.name != manifest.name
            and any(v.manifest.sha256 == manifest.sha256 for v in d.versions)
        ]
        if taken:  # one ciphertext, one dataset: never another's bytes under a new name
            raise GovernanceError(f"that ciphertext is already registered as {taken[0]!r}")
        if self._ciphertext_proposed(manifest.sha256, excluding=proposer):
            # read on the ledger while the owner's registration is still open: a decoy
            # accepted first would refuse the owner's own registration
            raise GovernanceError("that ciphertext is another member's, proposed for registration")
        if existing is not None:
            if existing.owner != proposer:
                raise GovernanceError(f"dataset {manifest.name!r} belongs to another member")
            digest = canonical_digest(action.manifest)
            if any(v.digest == digest for v in existing.versions):
                raise GovernanceError(f"this version of {manifest.name!r} is already registered")

    def _apply_register_dataset(self, action: RegisterDataset, proposal: Proposal) -> None:
        manifest = self._manifest(action)
        dataset = self.datasets.setdefault(
            manifest.name, Dataset(manifest.name, manifest.owner_fingerprint, [])
        )
        dataset.versions.append(
            DatasetVersion(len(dataset.versions) + 1, manifest, canonical_digest(action.manifest))
        )
        if action.rule is not None:
            dataset.rule = action.rule

    def _check_set_analysis_rule(self, action: SetAnalysisRule, proposer: str) -> None:
        dataset = self._owned(action.dataset, proposer)
        if dataset.versions:
            check_rule(action.rule, dataset.versions[-1].manifest.schema)

    def _apply_set_analysis_rule(self, action: SetAnalysisRule, proposal: Proposal) -> None:
        self.datasets[action.dataset].rule = action.rule

    def _check_set_privacy_budget(self, action: SetPrivacyBudget, proposer: str) -> None:
        self._owned(action.dataset, proposer)

    def _apply_set_privacy_budget(self, action: SetPrivacyBudget, proposal: Proposal) -> None:
        self.datasets[action.dataset].budget = (float(action.epsilon), float(action.delta))

    def _check_restore_consent(self, action: RestoreConsent, proposer: str) -> None:
        if self._owned(action.dataset, proposer).consent:
            raise GovernanceError(f"consent for {action.dataset!r} is not revoked")

    def _apply_restore_consent(self, action: RestoreConsent, proposal: Proposal) -> None:
        self.datasets[action.dataset].consent = True

    def _check_add_analysis(self, action: AddAnalysis, proposer: str) -> None:
        self._active(proposer, "analyst")
        current = self.analyses.get(action.name)
        if current is not None and _same_analysis(current, action):
            # a revision is a new version under the same name, approved like the first;
            # the same text, inputs, recipients and DP terms again would change nothing
            raise GovernanceError(
                f"version {current.version} of {action.name!r} is this analysis already"
            )
        for name in action.inputs:
            if not self._dataset(name).consent:
                raise GovernanceError(f"the owner of {name!r} has revoked consent")
        for fingerprint in action.recipients:
            self._active(fingerprint, "result_recipient")
        # owners approve by voting; a custom rule's approval is checked again at release
        self.check_policy(
            action.text,
            action.inputs,
            action.recipients,
            action.dp,
            None,
            language=action.language,
        )

    def check_policy(
        self,
        text: str,
        inputs: Iterable[str],
        recipients: Iterable[str],
        dp: DpSpec | None,
        approved_by: frozenset[str] | None,
        *,
        language: str = "sql",
    ) -> str:
        """Check an analysis against its inputs' current rules and budgets; returns
        what the enclave runs: for SQL the query with thresholds injected, for
        scoring the checked spec's text. ``approved_by`` None: assume the owners
        approve (the proposal is still open)."""
        # imported here: the SQL parser loads only where an analysis is checked, so
        # the SDK (which folds rooms to verify them) starts without it when it can
        from cleanroom.policy.check import check_dp, check_query  # noqa: PLC0415
        from cleanroom.policy.python import LANGUAGE as PYTHON  # noqa: PLC0415
        from cleanroom.policy.python import check_python  # noqa: PLC0415
        from cleanroom.policy.score import LANGUAGE as SCORE  # noqa: PLC0415
        from cleanroom.policy.score import check_score  # noqa: PLC0415
        from cleanroom.policy.train import LANGUAGE as TRAIN  # noqa: PLC0415
        from cleanroom.policy.train import check_train, to_run  # noqa: PLC0415

        if language not in ("sql", SCORE, PYTHON, TRAIN):  # an allow-list: no check, no run
            raise PolicyError(f"no check exists for {language!r} analyses")
        if language != "sql" and dp is not None:
            raise PolicyError(
                f"a {language} analysis releases no differentially private aggregates"
            )
        sources = self._sources(inputs, recipients, dp, approved_by)
        if language == SCORE:  # cheap and pure: not memoised
            return check_score(text, sources).spec.text()
        if language == PYTHON:
            return check_python(text, sources).bundle.text()
        if language == TRAIN:
            return to_run(check_train(text, sources))
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

    def _sources(
        self,
        inputs: Iterable[str],
        recipients: Iterable[str],
        dp: DpSpec | None,
        approved_by: frozenset[str] | None,
    ) -> dict[str, Source]:
        """The inputs as the checks see them, after the rules every language shares:
        each input registered, every recipient allowed by its rule, budgets only
        spent by DP analyses."""
        from cleanroom.policy.check import Source  # noqa: PLC0415 - see check_policy

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
            manifest = dataset.versions[-1].manifest
            sources[name] = Source(name, manifest.schema, dataset.rule, approved, manifest.model)
        return sources

    def _apply_add_analysis(self, action: AddAnalysis, proposal: Proposal) -> None:
        """A new analysis, or the next version of one: it replaces the version before
        it at once (jobs requested under the old text get no more keys, R7)."""
        previous = self.analyses.get(action.name)
        self.analyses[action.name] = Analysis(
            action.name,
            action.language,
            action.text,
            _text_digest(action.text),
            tuple(action.inputs),
            tuple(action.recipients),
            dp=action.dp,
            approved_by=frozenset(proposal.approvals),
            version=previous.version + 1 if previous is not None else 1,
            superseded=(*previous.superseded, previous.digest) if previous is not None else (),
        )

    def _check_retire_analysis(self, action: RetireAnalysis, proposer: str) -> None:
        if self._analysis(action.name).status != AnalysisStatus.ACTIVE:
            raise GovernanceError(f"analysis {action.name!r} is already retired")

    def _apply_retire_analysis(self, action: RetireAnalysis, proposal: Proposal) -> None:
        self.analyses[action.name].status = AnalysisStatus.RETIRED


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _same_analysis(current: Analysis, action: AddAnalysis) -> bool:
    return current.status == AnalysisStatus.ACTIVE and (
        current.digest,
        current.language,
        current.inputs,
        current.recipients,
        current.dp,
    ) == (
        _text_digest(action.text),
        action.language,
        tuple(action.inputs),
        tuple(action.recipients),
        action.dp,
    )


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
                    "model": s.model is not None,  # SQL never reads a model
                }
                for s in sources.values()
            ],
        }
    )
