"""A room seen by one party: its governance (statements this party signs) and jobs.

Every write is a statement this party signs; every receipt the service gives
back is verified against the pinned service key, and every tree head must
extend the last one this party saw. Publishing datasets and fetching results
is :mod:`cleanroom.client.datasets`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cleanroom.client import datasets
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
from cleanroom.datasets.schema import Schema
from cleanroom.errors import (
    CleanroomError,
    DeserializationError,
    IntegrityError,
    NotFoundError,
    OperationalError,
)
from cleanroom.governance import statements as st
from cleanroom.identities.identity import PublicIdentity
from cleanroom.ledger.entries import Entry, TreeHead, verify_receipt
from cleanroom.progress import Progress

if TYPE_CHECKING:
    from cleanroom.client.connection import Client


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

    def propose(self, action: dict[str, Any]) -> str:
        token = st.propose(self.client.party, self.id, action)
        self._submit(token)
        return st.statement_digest(token)

    def approve(self, proposal: str) -> None:
        self._submit(st.vote(self.client.party, self.id, proposal, approve=True))

    def reject(self, proposal: str) -> None:
        self._submit(st.vote(self.client.party, self.id, proposal, approve=False))

    def withdraw(self, proposal: str) -> None:
        self._submit(st.withdraw(self.client.party, self.id, proposal))

    def revoke_consent(self, dataset: str) -> None:
        self._submit(st.revoke_consent(self.client.party, self.id, dataset))

    # -- datasets and keys (cleanroom.client.datasets) -------------------------------------

    def publish_dataset(
        self,
        source: Any,
        *,
        schema: Schema | Path,
        name: str,
        progress: Progress | None = None,
        release_to: Sequence[str] = ("sev-snp", "tdx"),
        measurements: Sequence[str] | None = None,
        rule: dict[str, Any] | None = None,
        release: Literal["owner", "broker"] = "owner",
        key_vault: Path | None = None,
    ) -> str:
        """Seal ``source`` locally, propose its registration, upload the ciphertext,
        and record how its data key is released.

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
        analysis rule (see docs/privacy.md); without one, only analyses its
        owner approves by vote may read it.
        """
        return datasets.publish(
            self,
            source,
            schema=schema,
            name=name,
            progress=progress,
            release_to=release_to,
            measurements=measurements,
            rule=rule,
            release=release,
            key_vault=key_vault,
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

    def redeposit(self, *, key_vault: Path | None = None) -> list[str]:
        """Deposit again, with the broker now running, every key of this owner's
        datasets still sealed to a broker that restarted (its old key is gone, so
        those deposits are stale and jobs on them wait). The keys come from this
        owner's vault; the release policy stays. Returns the datasets re-deposited."""
        return datasets.redeposit(self, key_vault=key_vault)

    def _broker_offer(self, nonce: str) -> tuple[dict[str, Any], BrokerOffer]:
        """The service's key broker's offer for ``nonce``: as sent, and parsed (the
        evidence in it is checked by the caller against the verified room state)."""
        answer, what = self._get("/v1/broker", {"nonce": nonce})
        return answer, parse_view(BrokerOffer, answer, what=what)

    def upload(self, path: Path, progress: Progress | None = None) -> None:
        """Stream a sealed dataset's ciphertext; the service checks it against the manifest."""
        self.put_file(path, f"/v1/rooms/{self.id}/blobs/{{digest}}", progress)

    def put_file(self, path: Path, route: str, progress: Progress | None = None) -> None:
        """Stream ``path`` to ``route`` (``{digest}`` is replaced by its SHA-256)."""
        self.client._transport.put_file(path, route, progress)

    def download(
        self,
        digest: str,
        target: Path,
        progress: Progress | None = None,
        *,
        route: str | None = None,
    ) -> None:
        """Stream a dataset's ciphertext to ``target``; it appears only if its digest matches."""
        route = route or f"/v1/rooms/{self.id}/blobs/{digest}"
        self.client._transport.download(route, digest, target, progress)

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
        """Ask for an accepted analysis to run; returns the job id. The service's job
        runner starts an enclave, which must attest before it gets any key."""
        # the digest signed is the one the verified ledger approved, never the service's word
        found = self.audit.verify().state.analyses.get(analysis)
        if found is None:
            raise NotFoundError(f"no analysis {analysis!r} in this room")
        token = st.request_job(self.client.party, self.id, analysis, found.digest)
        self._submit(token)
        return st.statement_digest(token)

    def jobs(self) -> list[dict[str, Any]]:
        answer, what = self._get(f"/v1/rooms/{self.id}/jobs")
        jobs: list[dict[str, Any]] = parse_list(answer, what=what)
        for i, job in enumerate(jobs):
            parse_view(JobView, job, what=f"{what}, job {i}")
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        job, _ = self._job(job_id)
        return job

    def _job(self, job_id: str) -> tuple[dict[str, Any], JobView]:
        answer, what = self._get(f"/v1/rooms/{self.id}/jobs/{job_id}")
        view = parse_view(JobView, answer, what=what)
        if view.id != job_id:
            raise IntegrityError(f"{what} is the view of another job ({view.id[:12]}...)")
        job: dict[str, Any] = answer
        return job, view

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.2,
        on_update: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """The job's view once it succeeded or failed; raises if ``timeout`` passes.
        ``on_update`` sees each view while it waits (``waiting_for`` names the data
        owners whose key agents have not released yet)."""
        deadline = time.monotonic() + timeout
        while True:
            job, view = self._job(job_id)
            if view.status in ("succeeded", "failed"):
                return job
            if on_update is not None:
                on_update(job)
            if time.monotonic() > deadline:
                waiting = view.waiting_for or []
                detail = f", waiting for {', '.join(waiting)}" if waiting else ""
                raise OperationalError(f"job {job_id[:12]}... is still {view.status}{detail}")
            time.sleep(poll)

    def job_result(
        self, job_id: str, output: Path, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Fetch, verify and decrypt a job's result into ``output`` (.csv or .parquet).

        Everything is checked against the verified ledger, never the service's
        word: the job's ``job.complete`` statement signed by the attested
        enclave names the ciphertext digest and the key sealed to this party.
        Returns the job's verified view (``assurance`` says whether hardware
        protected the run), with ``rows``: the exact row count decrypted (the
        ledger's ``output.rows`` is a bucket)."""
        return datasets.job_result(self, job_id, output, progress)
