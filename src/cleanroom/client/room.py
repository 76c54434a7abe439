"""A room seen by one party: its governance (statements this party signs) and jobs.

Every write is a statement this party signs; every receipt the service gives
back is verified against the pinned service key, and every tree head must
extend the last one this party saw. Publishing datasets and fetching results
is :mod:`cleanroom.client.datasets`; the actions the typed methods propose are
built and checked in :mod:`cleanroom.client.actions`.

Everything a room holds is named as the CLI names it (:mod:`cleanroom.client.names`):
members, datasets and analyses by name, proposals and jobs by a unique prefix
of their id (4 characters at least). A full id is used as given, without a
look-up. Names are resolved from the service's lists; what is signed about a
job's analysis comes from the verified ledger, never from those lists.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cleanroom.client import actions, datasets, names
from cleanroom.client.answers import (
    BrokerOffer,
    Consistency,
    DatasetSummary,
    Entries,
    JobView,
    Proof,
    ProposalView,
    RoomSummary,
    Submitted,
    TreeHeadAnswer,
    parse_answer,
    parse_list,
    parse_view,
)
from cleanroom.client.audit import Audit
from cleanroom.client.transport import answer_name
from cleanroom.datasets.schema import MODEL_SCHEMA, Schema
from cleanroom.errors import (
    CleanroomError,
    DeserializationError,
    GovernanceError,
    IntegrityError,
    NotFoundError,
    OperationalError,
)
from cleanroom.governance import statements as st
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger.entries import Entry, TreeHead, verify_receipt
from cleanroom.progress import STATE, Progress, ProgressChoice, progress_for

if TYPE_CHECKING:
    import pyarrow as pa

    from cleanroom.client.connection import Client
    from cleanroom.governance.state import RoomState
    from cleanroom.models.manifest import ModelManifest

_DIGEST = re.compile(r"^[0-9a-f]{64}$")  # a full proposal or job id: used without a look-up


@dataclass(frozen=True)
class RoomInfo:
    room: str
    name: str
    status: str
    contract_version: int
    you: str


class Room:
    """One room, seen by one party. Every write is a statement this party signs."""

    def __init__(self, client: Client, room_id: str) -> None:
        self.client = client
        self.id = room_id
        self.audit = Audit(self)

    def __repr__(self) -> str:
        return f"Room({self.id}, as {self.client.party.name})"

    def _get(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, str]:
        return self.client._call("GET", path, params=params), answer_name("GET", path)

    def state(self) -> dict[str, Any]:
        answer, what = self._get(f"/v1/rooms/{self.id}")
        parse_view(RoomSummary, answer, what=what)
        state: dict[str, Any] = answer
        return state

    def proposals(self) -> list[dict[str, Any]]:
        answer, what = self._get(f"/v1/rooms/{self.id}/proposals")
        proposals: list[dict[str, Any]] = parse_list(answer, what=what)
        for i, proposal in enumerate(proposals):
            parse_view(ProposalView, proposal, what=f"{what}, proposal {i}")
        return proposals

    @property
    def members(self) -> list[dict[str, Any]]:
        answer, what = self._get(f"/v1/rooms/{self.id}")
        return parse_view(RoomSummary, answer, what=what).members

    def _submit(self, *tokens: str) -> list[dict[str, Any]]:
        last = self.client.known.last(self.id)
        path = f"/v1/rooms/{self.id}/statements"
        answer = self.client._call(
            "POST",
            path,
            json_body={"statements": list(tokens)},
            params={"known": last.size} if last is not None else None,
        )
        result = parse_answer(Submitted, answer, what=answer_name("POST", path))
        if len(result.receipts) != len(tokens) or len(result.entries) != len(tokens):
            raise IntegrityError(
                f"the service answered {len(result.receipts)} receipts and "
                f"{len(result.entries)} entries for {len(tokens)} statements"
            )
        receipts = [verify_receipt(r, self.client.service) for r in result.receipts]
        for receipt, token in zip(receipts, tokens, strict=True):
            if receipt.entry.statement != token or receipt.room != self.id:
                raise IntegrityError("the service's receipt is for another statement")
        self._observe(receipts[-1].tree_head, result.consistency)
        return result.entries

    def _observe(self, head: TreeHead, given: Consistency | None = None) -> None:
        """Accept ``head`` only if it extends the last head seen; a proof the
        service sent along is used when it is for exactly these sizes."""

        def proof(old: int, new: int) -> list[bytes]:
            if given is not None and (given.old, given.new) == (old, new):
                return [bytes.fromhex(h) for h in given.proof]
            path = f"/v1/rooms/{self.id}/consistency"
            answer, what = self._get(path, params={"old": old, "new": new})
            return [bytes.fromhex(h) for h in parse_answer(Proof, answer, what=what).proof]

        self.client.known.observe(head, self.client.pin, self.client.url, proof)

    def tree_head(self) -> TreeHead:
        answer, what = self._get(f"/v1/rooms/{self.id}/tree-head")
        token = parse_answer(TreeHeadAnswer, answer, what=what).tree_head
        head = TreeHead.verify(token, self.client.service, room=self.id)
        self._observe(head)
        return head

    # -- membership and governance -----------------------------------------------------

    def accept(self, invitation: str | None = None) -> None:
        """Accept membership (of the room, or of the add_member proposal ``invitation``;
        by default this party's own invitation)."""
        invitation = invitation or self.invitation()
        self._submit(st.member_accept(self.client.party, self.id, invitation))

    def decline(self, invitation: str | None = None) -> None:
        """Turn this party's invitation down (a signed ``member.decline``). The room
        then no longer lists it, no statement of the room can use this party, and a
        room still being formed can never become active."""
        invitation = invitation or self.invitation()
        self._submit(st.member_decline(self.client.party, self.id, invitation))

    def invitation(self) -> str:
        """The digest of the statement that invited this party: the latest accepted
        add_member proposal naming it, or else the room's ``room.create``."""
        me = self.client.party.fingerprint
        for proposal in reversed(self.proposals()):
            action = proposal["action"]  # parsed by proposals(): a dict, with these keys
            if proposal["status"] != "accepted" or action.get("type") != "add_member":
                continue
            try:
                named = PublicIdentity.from_document(action.get("identity")).fingerprint
            except CleanroomError:
                continue
            if named == me:
                found: str = proposal["id"]
                return found
        answer, what = self._get(f"/v1/rooms/{self.id}/entries", {"start": 0, "limit": 1})
        entries = parse_answer(Entries, answer, what=what).entries
        if not entries:
            raise DeserializationError(f"{what} has no entries: the room has no room.create")
        return st.statement_digest(Entry.from_json(entries[0]).statement)

    # -- names ---------------------------------------------------------------------------

    def _verified(self) -> RoomState:
        """The room's state from its verified ledger: what a reference is resolved
        against wherever the statement signed depends on the answer (a member named
        as a recipient or removed, a proposal voted on), never the service's word."""
        return self.audit.verify().state

    def resolve_proposal(self, ref: str) -> str:
        if _DIGEST.fullmatch(ref):
            return ref
        proposals = self._verified().proposals.values()
        listed = [{"id": p.id, "status": str(p.status), "type": p.action.type} for p in proposals]
        return names.proposal_id(listed, ref)

    def _job_id(self, ref: str) -> str:
        return ref if _DIGEST.fullmatch(ref) else names.job_id(self.jobs(), ref)

    def resolve_member(self, ref: str) -> str:
        if _DIGEST.fullmatch(ref):
            return ref
        members = self._verified().members.items()
        listed = [{"name": m.identity.name, "fingerprint": fp} for fp, m in members]
        return names.member_fingerprint(listed, ref)

    def _dataset(self, ref: str) -> str:
        listed = self.state()["datasets"]
        try:
            return names.dataset_name(listed, ref)
        except names.AmbiguousNameError:
            raise
        except NotFoundError:  # again, naming a registration still open if there is one
            return names.dataset_name(listed, ref, self.proposals())

    def _analysis(self, ref: str, known: Iterable[str]) -> str:
        listed = [{"name": n} for n in known]
        try:
            return names.analysis_name(listed, ref)
        except names.AmbiguousNameError:
            raise
        except NotFoundError:  # again, naming a proposal still open if there is one
            return names.analysis_name(listed, ref, self.proposals())

    # -- proposals and votes -------------------------------------------------------------

    def propose(self, action: dict[str, Any]) -> str:
        """Propose a raw governance action (a dict as in docs/governance.md); returns
        the proposal id. The typed methods below build and check each action for
        you; this is for power users and actions from files.

            pid = room.propose({"type": "retire_analysis", "name": "offers"})
        """
        token = st.propose(self.client.party, self.id, action)
        self._submit(token)
        return st.statement_digest(token)

    def approve(self, proposal: str) -> None:
        """Vote for a proposal, named by its id or a unique prefix of it.

        Example: ``room.approve("9c1e")``
        """
        pid = self.resolve_proposal(proposal)
        self._submit(st.vote(self.client.party, self.id, pid, approve=True))

    def reject(self, proposal: str) -> None:
        """Vote against a proposal (its id or a unique prefix).

        Example: ``room.reject("9c1e")``
        """
        pid = self.resolve_proposal(proposal)
        self._submit(st.vote(self.client.party, self.id, pid, approve=False))

    def withdraw(self, proposal: str) -> None:
        """Withdraw a proposal of yours that is still open (its id or a unique prefix).

        Example: ``room.withdraw("9c1e")``
        """
        pid = self.resolve_proposal(proposal)
        self._submit(st.withdraw(self.client.party, self.id, pid))

    def revoke_consent(self, dataset: str) -> None:
        """Stop your dataset being used, at once (no vote): jobs reading it fail from
        now on. :meth:`restore_consent` proposes to allow it again.

            room.revoke_consent("customers")
        """
        # the exact name, never resolved: the emergency switch must not depend on a list
        # the service gives (the state machine refuses a name that is not the author's)
        self._submit(st.revoke_consent(self.client.party, self.id, dataset))

    # -- typed proposals: one per governance action (actions.TYPED) ------------------------
    # each returns the proposal id; it takes effect once its approvers approve

    def add_member(
        self, identity: actions.IdentityLike, roles: Iterable[str] = ("observer",)
    ) -> str:
        """Propose a new member: its identity document (a dict), its identity file
        (``cleanroom party export``) or a loaded :class:`Party`, with its roles
        (``data_provider``, ``analyst``, ``result_recipient``, ``observer``). Once
        accepted, the newcomer joins with ``room.accept()``.

            pid = room.add_member("auditor.identity.json", roles=["observer"])
        """
        return self.propose(actions.add_member(actions.identity_document(identity), roles))

    def remove_member(self, member: str) -> str:
        """Propose removing a member, named by name or fingerprint prefix.

        Example: ``pid = room.remove_member("merchant")``
        """
        return self.propose(actions.remove_member(self.resolve_member(member)))

    def propose_analysis(
        self,
        name: str,
        sql: str | os.PathLike[str],
        *,
        inputs: Sequence[str],
        recipients: Sequence[str],
        dp: Mapping[str, Any] | Any | None = None,
    ) -> str:
        """Propose an SQL analysis: ``sql`` is the query's text (one SELECT; tables
        are the input datasets' names) or a :class:`~pathlib.Path` to a file holding
        it; ``inputs`` are dataset names, ``recipients`` member names (or
        fingerprint prefixes) who alone can decrypt the result. ``dp`` makes it a
        differentially private release (a dict: epsilon, unit, max_contributions,
        group_by, aggregates; see docs/privacy.md). It runs once the owners of
        every input and every recipient approve; proposing the same name again
        proposes a new version.

            pid = room.propose_analysis(
                "offers",
                "SELECT m.segment, COUNT(*) AS n FROM transactions t "
                "JOIN customers m USING (customer) GROUP BY m.segment",
                inputs=["transactions", "customers"],
                recipients=["bank"],
            )
        """
        text = Path(sql).read_text(encoding="utf-8") if isinstance(sql, os.PathLike) else sql
        action = actions.add_analysis(
            name,
            text,
            [self._dataset(i) for i in inputs],
            [self.resolve_member(r) for r in recipients],
            actions.as_json(dp, "dp") if dp is not None else None,
        )
        return self.propose(action)

    def propose_scoring(
        self,
        name: str,
        *,
        model: str,
        records: str,
        id_column: str,
        recipients: Sequence[str],
        outputs: Sequence[str] = (),
        keep: tuple[str, int | bool] | None = None,
    ) -> str:
        """Propose a scoring analysis (ADR 0023): the protected ``model`` (its current
        version, pinned by digest) scores every row of ``records`` inside the enclave;
        the result holds ``id_column`` and the model ``outputs`` named, only for the
        rows whose output ``keep[0]`` equals ``keep[1]`` when ``keep`` is given. The
        model never leaves the enclave. It runs once the model's owner, the records'
        owner and every recipient approve.

            pid = room.propose_scoring(
                "candidates", model="triage", records="patients",
                id_column="patient_id", keep=("label", 1), recipients=["hospital"],
            )
        """
        from cleanroom.policy.score import LANGUAGE, ScoreSpec  # noqa: PLC0415
        from cleanroom.wire import parse_model  # noqa: PLC0415

        model_name = self._dataset(model)
        versions = self._verified().datasets[model_name].versions
        pinned = versions[-1].manifest.model if versions else None
        if pinned is None:
            raise GovernanceError(f"{model_name!r} is not a model (or has no registered version)")
        terms: dict[str, Any] = {
            "model": model_name,
            "model_digest": pinned.digest(),  # this exact model: a new version needs a new vote
            "records": self._dataset(records),
            "id": id_column,
            "outputs": list(outputs),
        }
        if keep is not None:
            terms["keep"] = {"output": keep[0], "equals": keep[1]}
        spec = parse_model(ScoreSpec, terms, what="scoring analysis")  # a clear error, named
        action = actions.add_analysis(
            name,
            spec.text(),
            [spec.model, spec.records],
            [self.resolve_member(r) for r in recipients],
            None,
            language=LANGUAGE,
        )
        return self.propose(action)

    def propose_python(
        self,
        name: str,
        bundle: str | os.PathLike[str] | Mapping[str, str],
        *,
        entry: str,
        output: Sequence[tuple[str, str]],
        inputs: Sequence[str],
        recipients: Sequence[str],
    ) -> str:
        """Propose a Python analysis (ADR 0023): the code bundle (a directory of ``.py``
        files, or a mapping of relative file names to source) is approved by digest
        like SQL and runs in the enclave's confined child, with no network and no
        file but its inputs. ``entry`` runs as ``__main__`` with ``argv[1]`` the
        directory of inputs (``<name>.parquet``, decrypted) and ``argv[2]`` the output
        directory, where it writes ``result.parquet`` with exactly the ``output``
        columns, as ``(name, type)`` pairs. Only inputs whose owners approve this exact
        bundle may be read (a custom rule, or none).

            pid = room.propose_python(
                "segments", "jobs/segments", entry="main.py",
                output=[("segment", "string"), ("n", "int64")],
                inputs=["customers"], recipients=["bank"],
            )
        """
        from cleanroom.policy.python import LANGUAGE, Bundle, check_syntax  # noqa: PLC0415
        from cleanroom.wire import parse_model  # noqa: PLC0415

        files = dict(bundle) if isinstance(bundle, Mapping) else _bundle_files(Path(bundle))
        terms = {
            "entry": entry,
            "files": files,
            "output": [{"name": n, "type": t} for n, t in output],
        }
        parsed = parse_model(Bundle, terms, what="Python bundle")
        check_syntax(parsed)  # here, before anything is signed
        action = actions.add_analysis(
            name,
            parsed.text(),
            [self._dataset(i) for i in inputs],
            [self.resolve_member(r) for r in recipients],
            None,
            language=LANGUAGE,
        )
        return self.propose(action)

    def propose_training(
        self,
        name: str,
        *,
        training_sql: str,
        label: str,
        features: Sequence[str],
        inputs: Sequence[str],
        recipients: Sequence[str],
        algorithm: Literal["logistic_regression", "gradient_boosting"] = "gradient_boosting",
        model: str | None = None,
        params: Mapping[str, int | float] | None = None,
        seed: int = 0,
        holdout: float = 0.2,
        deliver: Literal["model", "metrics"] = "model",
    ) -> str:
        """Propose a training analysis (ADR 0023): ``training_sql`` over ``inputs``
        defines the training set; the enclave fits ``algorithm`` on it (``params``
        from the allow-list in :mod:`cleanroom.policy.train`), converts the model
        to ONNX there, evaluates it on a seeded ``holdout`` share of the rows and
        seals one row to the recipients: the model's ONNX bytes (unless ``deliver``
        is ``"metrics"``) and its metrics. Only inputs whose owners approve this
        exact analysis may be read (a custom rule, or none). Add ORDER BY to the
        SQL for a model that is the same on every run.

            pid = room.propose_training(
                "response-model", training_sql="SELECT age, hba1c, responded FROM trial "
                "ORDER BY patient_id", label="responded", features=["age", "hba1c"],
                inputs=["trial"], recipients=["sponsor"],
            )
        """
        from cleanroom.policy.train import LANGUAGE, training_spec  # noqa: PLC0415

        spec = training_spec(
            training_sql=training_sql,
            label=label,
            features=features,
            model=model if model is not None else name,
            algorithm=algorithm,
            params=params,
            seed=seed,
            holdout=holdout,
            deliver=deliver,
        )
        action = actions.add_analysis(
            name,
            spec.text(),
            [self._dataset(i) for i in inputs],
            [self.resolve_member(r) for r in recipients],
            None,
            language=LANGUAGE,
        )
        return self.propose(action)

    def try_analysis(
        self,
        language: str,
        text: str,
        inputs: Sequence[str],
        *,
        recipients: Sequence[str] = (),
        models: Mapping[str, bytes] | None = None,
        rows: int | None = None,
        seed: int = 0,
    ) -> pa.Table:
        """Run an analysis here, before proposing it, with the enclave's own job kind
        over mock rows of each dataset input (from its verified schema and rule alone,
        never its data) and, for scoring, the model bytes you hold (``models``: input
        name to ONNX bytes, which must be the version the room has registered). The
        room's check runs first, as if every owner approved. A Python bundle runs in
        the same confined child as in the enclave. Nothing is proposed or recorded;
        the result is returned. Name the ``recipients`` you will propose: without
        them, the inputs' rules on who may receive results are not tried. (An SQL
        analysis is tried with `analysis check`.)

            spec = TrainSpec(algorithm="gradient_boosting", training=sql, label="responded",
                             features=["age_band", "hba1c"], model="response")
            metrics = room.try_analysis("train", spec.text(), ["trial"])
        """
        from cleanroom.client.mocks import mock_of  # noqa: PLC0415 - pyarrow
        from cleanroom.enclave.local import run_locally  # noqa: PLC0415

        state = self._verified()
        names = [self._dataset(i) for i in inputs]
        checked = state.check_policy(
            text,
            names,
            [self.resolve_member(r) for r in recipients],
            None,
            None,
            language=language,
        )
        held = {self._dataset(name): data for name, data in (models or {}).items()}
        tables, pinned = {}, {}
        for name in names:
            dataset = state.datasets[name]
            manifest = dataset.versions[-1].manifest.model
            if manifest is None:
                tables[name] = mock_of(state, dataset, rows, seed)
            elif name in held:
                pinned[name] = (held[name], manifest)
            else:
                raise GovernanceError(f"{name!r} is a model: pass its bytes in models to try it")
        return run_locally(language, checked, tables, models=pinned).table

    def retire_analysis(self, analysis: str) -> str:
        """Propose that an analysis may no longer run.

        Example: ``pid = room.retire_analysis("offers")``
        """
        found = self._analysis(analysis, [a["name"] for a in self.state()["analyses"]])
        return self.propose(actions.retire_analysis(found))

    def propose_measurements(
        self,
        measurements: Iterable[actions.MeasurementLike] = (),
        *,
        this_install: bool = False,
        allow_insecure_virtual: bool = False,
        terms: Mapping[str, Any] | Any | None = None,
    ) -> str:
        """Propose the enclave measurements the room trusts (replacing the current
        list): each ``"PLATFORM:HEX"`` (``sev-snp``, ``tdx``, ``sgx``,
        ``insecure-virtual``), a (platform, value) pair or a dict.
        ``this_install`` adds this machine's insecure-virtual measurement (no
        hardware protection: development rooms only, and only with
        ``allow_insecure_virtual=True``, said explicitly). ``terms`` are the
        contract's other attestation terms (host_data, min_tcb, vmpl, ...; see
        docs/attestation.md). Every voting member must approve.

            pid = room.propose_measurements(this_install=True, allow_insecure_virtual=True)
            pid = room.propose_measurements(["sev-snp:5f2c...", "tdx:a1b2..."])
        """
        chosen = [actions.measurement(m) for m in measurements]
        if this_install:
            # measuring reads the installed package: loaded only by who asks for it
            from cleanroom.attestation.virtual import measure  # noqa: PLC0415

            chosen.append({"platform": "insecure-virtual", "value": measure()})
        if not chosen:
            raise ValueError("name at least one measurement, or this_install=True")
        action = actions.set_measurements(
            chosen,
            allow_insecure_virtual=allow_insecure_virtual,
            terms=actions.as_json(terms, "terms") if terms is not None else None,
        )
        return self.propose(action)

    def set_analysis_rule(self, dataset: str, rule: Mapping[str, Any] | Any) -> str:
        """Propose a dataset's analysis rule (a dict: ``{"type": "aggregation", ...}``,
        ``"list"`` or ``"custom"``; see docs/privacy.md), replacing the current one.

            pid = room.set_analysis_rule("transactions", {
                "type": "aggregation",
                "aggregates": [{"function": "sum", "columns": ["amount"]}],
                "dimensions": ["segment"], "join_columns": ["customer"],
                "min_distinct": 10,
                "recipients": ["bank"],  # member names, or fingerprints
            })
        """
        found = self._dataset(dataset)
        return self.propose(actions.set_analysis_rule(found, self._rule(rule)))

    def _rule(self, rule: Mapping[str, Any] | Any) -> dict[str, Any]:
        """A rule as the ledger takes it: its recipients named by fingerprint."""
        document = actions.as_json(rule, "rule")
        if isinstance(document.get("recipients"), list):
            document["recipients"] = [self.resolve_member(str(r)) for r in document["recipients"]]
        return document

    def set_privacy_budget(self, dataset: str, epsilon: float, delta: float = 0.0) -> str:
        """Propose a dataset's total differential-privacy budget; every DP release
        reading it spends from it (see :meth:`budgets`).

            pid = room.set_privacy_budget("transactions", epsilon=3.0)
        """
        return self.propose(actions.set_privacy_budget(self._dataset(dataset), epsilon, delta))

    def set_limits(
        self,
        *,
        time_s: int,
        memory_mb: int,
        max_result_rows: int,
        max_scoring_jobs: int | None = None,
        max_scored_rows: int | None = None,
    ) -> str:
        """Propose the room's resource limits per job (a service may be stricter), and
        optionally its caps on scoring over the room's life: how many scoring jobs may
        run, and how many rows of records they may score in all (model extraction
        needs many queries; the caps bound them, on the ledger). Caps already set and
        not named here are kept.

        Example: ``pid = room.set_limits(time_s=600, memory_mb=4096, max_result_rows=1_000_000)``
        """
        current = self._verified().limits  # caps not named here are kept, never dropped
        if current is not None:
            if max_scoring_jobs is None:
                max_scoring_jobs = current.max_scoring_jobs
            if max_scored_rows is None:
                max_scored_rows = current.max_scored_rows
        return self.propose(
            actions.set_limits(
                time_s,
                memory_mb,
                max_result_rows,
                max_scoring_jobs=max_scoring_jobs,
                max_scored_rows=max_scored_rows,
            )
        )

    def change_constitution(
        self,
        rule: Literal["default", "unanimity", "majority", "threshold"],
        *,
        k: int | None = None,
        proposal_ttl_hours: int = 168,
    ) -> str:
        """Propose how the room decides: ``"default"`` (those affected approve),
        ``"unanimity"``, ``"majority"`` or ``"threshold"`` (``k`` approvals), and
        how long a proposal stays open.

            pid = room.change_constitution("threshold", k=2)
        """
        return self.propose(actions.change_constitution(rule, k, proposal_ttl_hours))

    def restore_consent(self, dataset: str) -> str:
        """Propose that a dataset whose consent its owner revoked may be used again.

        Example: ``pid = room.restore_consent("customers")``
        """
        return self.propose(actions.restore_consent(self._dataset(dataset)))

    # -- datasets and keys (cleanroom.client.datasets) -------------------------------------

    def publish_dataset(
        self,
        source: Any,
        *,
        schema: Schema | Mapping[str, Any] | str | os.PathLike[str],
        name: str,
        progress: ProgressChoice = None,
        release_to: Sequence[str] = ("sev-snp", "tdx"),
        measurements: Sequence[str] | None = None,
        rule: Mapping[str, Any] | Any | None = None,
        release: Literal["owner", "broker"] = "owner",
        key_vault: str | os.PathLike[str] | None = None,
    ) -> str:
        """Seal ``source`` locally, propose its registration, upload the ciphertext,
        and record how its data key is released.

        ``source`` is a .csv or .parquet path, or any Arrow-compatible data: a
        pyarrow Table, RecordBatch or RecordBatchReader, a pandas or Polars
        DataFrame, a DuckDB relation (``con.sql("SELECT ...")``), or any object
        with ``__arrow_c_stream__``. Every row is checked against ``schema`` (a
        :class:`Schema`, its JSON as a dict, or a schema file) before anything
        leaves this machine. Progress shows in a terminal or notebook
        (``progress=False`` silences it).

        Returns the proposal id; the dataset is registered once its approvers
        approve. ``release="owner"`` (the default): the data key stays on this
        machine, in the key vault (``key_vault``, by default ``data-keys`` in
        the client's state directory), and this owner's key agent
        (``cleanroom keys serve``) releases it to each attested enclave itself.
        ``release="broker"``: the key is deposited sealed to the service's
        attested key broker, once its evidence checks out against the room's
        contract (so the contract must already approve a measurement), and the
        broker releases it on the owner's behalf; a copy stays in the vault (if
        this client has one) to re-deposit when the broker restarts with a new
        key (:meth:`redeposit`). Either way keys go only to
        enclaves on the ``release_to`` platforms (add ``"insecure-virtual"``
        explicitly for development rooms) whose measurement the room approved
        (and, if given, is in ``measurements``). ``rule`` is the dataset's
        analysis rule (see :meth:`set_analysis_rule`); without one, only
        analyses its owner approves by vote may read it.

            pid = room.publish_dataset(
                duckdb.sql("SELECT * FROM 'cards.parquet'"),
                schema="cards.schema.json", name="transactions",
            )
        """
        if isinstance(schema, Schema):
            declared = schema
        elif isinstance(schema, Mapping):
            declared = Schema.from_json(dict(schema))
        else:
            declared = Schema.load(Path(schema))
        with progress_for(progress) as shown:
            return datasets.publish(
                self,
                source,
                schema=declared,
                name=name,
                progress=shown,
                release_to=release_to,
                measurements=measurements,
                rule=self._rule(rule) if rule is not None else None,
                release=release,
                key_vault=Path(key_vault) if key_vault is not None else None,
            )

    def publish_model(
        self,
        model_bytes: bytes,
        manifest: ModelManifest,
        *,
        name: str,
        release_to: Sequence[str] = ("sev-snp", "tdx"),
        measurements: Sequence[str] | None = None,
        release: Literal["owner", "broker"] = "owner",
        key_vault: str | os.PathLike[str] | None = None,
    ) -> str:
        """Publish a model as a sealed asset (ADR 0023), exactly as
        :meth:`publish_dataset` publishes data: sealed here under a fresh key, the
        signed manifest carrying ``manifest`` (build it from the bytes with
        :func:`cleanroom.models.onnx.describe`), registration proposed, the key
        released by this owner's key agent (or the attested broker) to an attested
        enclave only. No SQL may read it; a scoring analysis (:meth:`propose_scoring`)
        that this owner approves is the only way it runs, and it never leaves the
        enclave.

            description = describe(onnx_bytes)
            manifest = ModelManifest(name="triage", version="1.0", vendor_name=me.name,
                vendor_fingerprint=me.fingerprint, features=("age", "hba1c"),
                model=description, created_at="2026-11-26T00:00:00Z")
            pid = room.publish_model(onnx_bytes, manifest, name="triage")
        """
        from cleanroom.datasets.seal import model_table  # noqa: PLC0415 - pyarrow

        return datasets.publish(
            self,
            model_table(model_bytes, manifest),
            schema=MODEL_SCHEMA,
            name=name,
            progress=None,
            release_to=release_to,
            measurements=measurements,
            rule=None,
            release=release,
            key_vault=Path(key_vault) if key_vault is not None else None,
            model=manifest,
        )

    def keep_key_at_home(
        self,
        dataset: str,
        manifest: dict[str, Any],
        platforms: Sequence[str],
        measurements: Sequence[str] | None = None,
    ) -> None:
        """Record that this owner's key agent releases the key of a dataset version
        itself (a ``key.deposit`` statement with no key), with its release policy."""
        datasets.keep_key_at_home(self, dataset, manifest, platforms, measurements)

    def deposit_key(
        self,
        dataset: str,
        manifest: dict[str, Any],
        key: bytes,
        platforms: Sequence[str],
        measurements: Sequence[str] | None = None,
    ) -> None:
        """Deposit a dataset version's data key with the service's attested key
        broker, with a release policy (a ``key.deposit`` statement; a new one
        replaces it). The broker's evidence must bind a nonce chosen here and
        pass the room's contract (from the verified ledger) and this policy;
        only then is the key sealed to the broker's key."""
        datasets.deposit_key(
            self, dataset, manifest, key, platforms=platforms, measurements=measurements
        )

    def stale_deposits(self) -> list[str]:
        """This owner's datasets whose current version is deposited with a key broker
        that is no longer the service's (it restarted, with a new key)."""
        return [d for d, _ in datasets.stale(self)]

    def redeposit(self, *, key_vault: str | os.PathLike[str] | None = None) -> list[str]:
        """Deposit again, with the broker now running, every key of this owner's
        datasets still sealed to a broker that restarted (its old key is gone, so
        those deposits are stale and jobs on them wait). The keys come from this
        owner's vault; the release policy stays. Returns the datasets re-deposited."""
        vault = Path(key_vault) if key_vault is not None else None
        return datasets.redeposit(self, key_vault=vault)

    def _broker_offer(self, nonce: str) -> tuple[dict[str, Any], BrokerOffer]:
        """The service's key broker's offer for ``nonce``: as sent, and parsed (the
        evidence in it is checked by the caller against the verified room state)."""
        answer, what = self._get("/v1/broker", {"nonce": nonce})
        return answer, parse_view(BrokerOffer, answer, what=what)

    def upload(self, path: str | os.PathLike[str], progress: ProgressChoice = None) -> None:
        """Stream a sealed dataset's ciphertext; the service checks it against the manifest."""
        with progress_for(progress) as shown:
            self.put_file(Path(path), f"/v1/rooms/{self.id}/blobs/{{digest}}", shown)

    def put_file(
        self, path: str | os.PathLike[str], route: str, progress: Progress | None = None
    ) -> None:
        """Stream ``path`` to ``route`` (``{digest}`` is replaced by its SHA-256)."""
        self.client._transport.put_file(Path(path), route, progress)

    def download(
        self,
        digest: str,
        target: str | os.PathLike[str],
        progress: ProgressChoice = None,
        *,
        route: str | None = None,
    ) -> None:
        """Stream a dataset's ciphertext to ``target``; it appears only if its digest matches."""
        route = route or f"/v1/rooms/{self.id}/blobs/{digest}"
        with progress_for(progress) as shown:
            self.client._transport.download(route, digest, Path(target), shown)

    def budgets(self) -> dict[str, dict[str, float] | None]:
        """Each dataset's privacy budget: epsilon, delta, spent, remaining (None: no budget)."""
        answer, what = self._get(f"/v1/rooms/{self.id}")
        summary = parse_view(RoomSummary, answer, what=what)
        found = [
            parse_view(DatasetSummary, d, what=f"{what}, dataset {i}")
            for i, d in enumerate(summary.datasets)
        ]
        return {d.name: d.budget for d in found}

    # -- jobs ----------------------------------------------------------------------------

    def run_job(self, analysis: str) -> str:
        """Ask for an accepted analysis to run (by name); returns the job id. The
        service's job runner starts an enclave, which must attest before it gets
        any key.

            job = room.run_job("offers")
            room.wait_job(job)
        """
        # the digest signed is the one the verified ledger approved, never the service's word
        analyses = self.audit.verify().state.analyses
        name = self._analysis(analysis, analyses)
        token = st.request_job(self.client.party, self.id, name, analyses[name].digest)
        self._submit(token)
        return st.statement_digest(token)

    def jobs(self) -> list[dict[str, Any]]:
        """The room's jobs, oldest first (each as :meth:`job` shows it)."""
        answer, what = self._get(f"/v1/rooms/{self.id}/jobs")
        jobs: list[dict[str, Any]] = parse_list(answer, what=what)
        for i, job in enumerate(jobs):
            parse_view(JobView, job, what=f"{what}, job {i}")
        return jobs

    def job(self, job: str) -> dict[str, Any]:
        """One job (its id or a unique prefix): ``status`` (requested, running,
        succeeded, failed), ``waiting_for`` (the key agents not answered yet),
        ``queue_position``, ``assurance``, ``output`` (bucketed sizes), ``reason``.

            room.job("5d1c")["status"]
        """
        view, _ = self._job(self._job_id(job))
        return view

    def _job(self, job_id: str) -> tuple[dict[str, Any], JobView]:
        answer, what = self._get(f"/v1/rooms/{self.id}/jobs/{job_id}")
        view = parse_view(JobView, answer, what=what)
        if view.id != job_id:
            raise IntegrityError(f"{what} is the view of another job ({view.id[:12]}...)")
        job: dict[str, Any] = answer
        return job, view

    def wait_job(
        self,
        job: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.2,
        on_update: Callable[[dict[str, Any]], object] | None = None,
        progress: ProgressChoice = None,
    ) -> dict[str, Any]:
        """Wait for a job (its id or a unique prefix) to succeed or fail; returns its
        view (see :meth:`job`), and raises :class:`OperationalError` if ``timeout``
        seconds pass first. A failed job is returned, not raised: check
        ``view["status"]`` and ``view["reason"]``.

        In a terminal or notebook it shows each change of state as it happens
        (``requested -> running -> succeeded``, the queue position, the data
        owners whose key agents have not released yet); ``progress=False``
        silences it. ``on_update`` sees each view while it waits.

            view = room.wait_job(room.run_job("offers"))
            assert view["status"] == "succeeded", view["reason"]
        """
        job_id = self._job_id(job)
        deadline = time.monotonic() + timeout
        shown_state: tuple[Any, ...] | None = None
        with progress_for(progress) as shown:
            while True:
                current, view = self._job(job_id)
                state = (view.status, current.get("queue_position"), tuple(view.waiting_for or ()))
                if state != shown_state:
                    shown_state = state
                    shown.start(_job_line(job_id, current), None, STATE)
                if view.status in ("succeeded", "failed"):
                    return current
                if on_update is not None:
                    on_update(current)
                if time.monotonic() > deadline:
                    waiting = view.waiting_for or []
                    detail = f", waiting for {', '.join(waiting)}" if waiting else ""
                    raise OperationalError(f"job {job_id[:12]}... is still {view.status}{detail}")
                time.sleep(poll)

    def job_result(
        self,
        job: str,
        *,
        decimals: datasets.Decimals = "exact",
        progress: ProgressChoice = None,
    ) -> pa.Table:
        """A job's result (its id or a unique prefix), fetched, verified and
        decrypted in memory: a :class:`pyarrow.Table` (``.to_pandas()``,
        ``polars.from_arrow(...)`` and ``duckdb.sql("FROM t")`` all read it).

        Everything is checked against the verified ledger, never the service's
        word: the job's ``job.complete`` statement signed by the attested
        enclave names the ciphertext digest and the key sealed to this party
        (result recipients only). The table's schema metadata says where it came
        from: ``cleanroom.room``, ``cleanroom.job``, ``cleanroom.analysis``,
        ``cleanroom.measurement`` and ``cleanroom.assurance`` (``insecure-virtual``
        means no hardware protected the run).

        ``decimals="exact"`` (the default) keeps SQL decimals (``SUM`` of integers,
        ``DECIMAL`` columns) as Arrow decimals, exact, which pandas shows as Python
        ``Decimal`` objects; ``decimals="float"`` turns them into float64 (exact
        up to about 15 significant digits), as most notebook code expects.

            result = room.job_result(job, decimals="float")
            df = result.to_pandas()
        """
        with progress_for(progress) as shown:
            return datasets.job_result(self, self._job_id(job), shown, decimals=decimals)

    def download_result(
        self,
        job: str,
        output: str | os.PathLike[str],
        *,
        progress: ProgressChoice = None,
    ) -> dict[str, Any]:
        """Like :meth:`job_result`, but written to ``output`` (.csv or .parquet; a
        Parquet file keeps the ``cleanroom.*`` metadata). It appears only once
        whole and verified. Returns the job's verified view, with ``rows``: the
        exact row count decrypted (the ledger's ``output.rows`` is a bucket).

            room.download_result("5d1c", "offers.parquet")
        """
        with progress_for(progress) as shown:
            return datasets.download_result(self, self._job_id(job), Path(output), shown)


def _job_line(job_id: str, view: dict[str, Any]) -> str:
    """One line on a job's state, for progress: ``job 5d1c... (offers): running``."""
    status = view.get("status")
    line = f"job {job_id[:12]}... ({view.get('analysis', '?')}): {status}"
    queued = view.get("queue_position")
    if status in ("requested", "running") and queued is not None:
        line += f", queued at position {queued}"
    waiting = view.get("waiting_for") or []
    if status == "requested" and waiting:
        line += f", waiting for {', '.join(str(w) for w in waiting)}"
    if status == "failed" and view.get("reason"):
        line += f": {view['reason']}"
    return line


def _bundle_files(root: Path) -> dict[str, str]:
    """The ``.py`` files under ``root`` by relative name (nothing else is sent)."""
    if not root.is_dir():
        raise DeserializationError(f"the bundle {root} is not a directory")
    files = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        try:
            files[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DeserializationError(f"cannot read {path}: {exc}") from exc
    if not files:
        raise DeserializationError(f"the bundle {root} holds no .py file")
    return files
