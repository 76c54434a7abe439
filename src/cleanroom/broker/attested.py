"""The key broker's inside: what runs in its own attested process.

At start the broker creates its key pair in memory (:meth:`Party.create`);
nothing writes it anywhere. It publishes *offers*: its public identity with
evidence whose report data binds that identity and a nonce the depositor
chose (:func:`cleanroom.attestation.evidence.broker_binding`). An
owner's SDK checks the offer against the room's contract and seals the data
key to that identity; the ledger checks it again on deposit.

For each key request the service passes on, the broker decides for itself,
like an owner's key agent:

1. it verifies the room's whole ledger export under the service's key, and
   that it extends every tree head this instance accepted before for that
   room (no rollback, and no fork of what it saw, within its lifetime; the
   operator can still show it a history that withholds recent statements,
   such as a consent revocation not yet recorded);
2. it never releases a job twice: a release it signed that is not on the
   ledger yet is only sent again, and one the operator kept off the ledger
   makes it refuse the room (:mod:`cleanroom.broker.memory`);
3. it takes the job and the room's rules from that verified state, and
   decides with the room's own release decision
   (:meth:`RoomState.check_key_request`, conditions R1-R11);
4. it opens only deposits sealed to its own key, re-seals each to the
   enclave's ephemeral key, and signs ``key.release`` with its attested key;
   the ledger and every auditor re-check that statement in full. A request
   the room's rules refuse gets a ``key.deny`` signed by the broker; a request
   that is itself bad (evidence, nonce, replay) is ignored.

A broker that restarts has a new key and opens no earlier deposit: owners
re-deposit (see :meth:`cleanroom.client.Room.redeposit`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cleanroom.attestation.evidence import Attester, broker_binding
from cleanroom.broker.memory import ReleaseMemory, WithheldError
from cleanroom.datasets.manifest import key_id_of
from cleanroom.errors import (
    AttestationError,
    CleanroomError,
    DeserializationError,
    GovernanceError,
)
from cleanroom.governance.model import KeyRequestError
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import sign_statement
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party
from cleanroom.ledger.heads import TreeHeadTracker
from cleanroom.ledger.verify import verify_export
from cleanroom.protocol.sealing import open_deposit, seal_release

MIN_NONCE, MAX_NONCE = 16, 128


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AttestedBroker:
    """One broker instance: its key lives as long as this object."""

    def __init__(
        self,
        attester: Attester,
        service: PublicIdentity,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.attester = attester
        self.service = service
        self.clock = clock or _now_ms
        self._party = Party.create("key broker")  # in memory only, never written
        self._heads = TreeHeadTracker(service)  # in memory: what this instance accepted
        self._released = ReleaseMemory()  # in memory: what this instance released
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return self._party.fingerprint

    @property
    def identity(self) -> dict[str, Any]:
        return self._party.identity_document()

    def offer(self, nonce: str) -> dict[str, Any]:
        """This broker's identity with fresh evidence binding it and ``nonce``."""
        if not isinstance(nonce, str) or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise DeserializationError(f"a nonce is {MIN_NONCE} to {MAX_NONCE} characters")
        report = broker_binding(nonce=nonce, tee_pubkey=self.fingerprint)
        return {"identity": self.identity, "nonce": nonce, "evidence": self.attester.attest(report)}

    def answer(self, export: dict[str, Any], request: dict[str, Any]) -> str | None:
        """A signed ``key.release`` or ``key.deny`` for ``request``, or None when the
        request is bad in itself, nothing of this job is deposited with this broker,
        or an earlier release of this broker must reach the ledger first. Raises
        :class:`IntegrityError` when the ledger does not verify, and
        :class:`WithheldError` when an earlier release was kept off it."""
        verified = verify_export(export, self.service)  # (1)
        with self._lock:
            self._heads.observe_verified(verified)
        state = verified.state
        job = state.jobs.get(str(request.get("job", "")))
        mine = state.due(job, self.fingerprint) if job is not None else []
        if job is None or not mine:
            return None
        try:  # (2) never a second release while one is off the ledger
            again = self._released.check(
                state, job.id, _fingerprint(request.get("enclave")), str(request.get("nonce"))
            )
        except WithheldError:
            raise
        except GovernanceError:
            return None
        if again is not None:
            return again  # the same release, not yet recorded: sent again, never a new one
        try:
            state.check_key_request(request, now_ms=self.clock())  # (3)
        except (AttestationError, KeyRequestError):
            return None  # anyone can forge a bad request: it says nothing about the job
        except GovernanceError as exc:
            return self._deny(state.room, job.id, str(exc))
        return self._release(state, job.id, request, mine)

    def _release(
        self, state: RoomState, job: str, request: dict[str, Any], mine: list[tuple[str, str]]
    ) -> str:
        """(4) open this broker's deposits, seal each key to the enclave, sign."""
        enclave = PublicIdentity.from_document(request["enclave"])
        sealed = []
        for dataset, manifest in mine:
            try:
                key = open_deposit(
                    self._party,
                    state.deposits[manifest].sealed_key or "",
                    room=state.room,
                    dataset=dataset,
                    manifest=manifest,
                )
            except CleanroomError:
                key = b""
            if key_id_of(key) != state.version(dataset, manifest).manifest.key_id:
                reason = f"the key deposited for {dataset!r} does not open to its manifest's key"
                return self._deny(state.room, job, reason)
            released = seal_release(
                key, enclave, room=state.room, job=job, dataset=dataset, manifest=manifest
            )
            sealed.append({"dataset": dataset, "manifest": manifest, "sealed": released})
        body: dict[str, Any] = {
            "job": job,
            "enclave": request["enclave"],
            "nonce": request["nonce"],
            "evidence": request["evidence"],
            "inputs": [{"dataset": d, "manifest": m} for d, m in mine],
            "sealed_keys": sealed,
        }
        statement = sign_statement(self._party, state.room, "key.release", body, now=self.clock)
        self._released.remember(state.room, job, enclave.fingerprint, body["nonce"], statement)
        return statement

    def _deny(self, room: str, job: str, reason: str) -> str:
        body = {"job": job, "reason": reason[:2000]}
        return sign_statement(self._party, room, "key.deny", body, now=self.clock)


def _fingerprint(document: Any) -> str:
    try:
        return PublicIdentity.from_document(document).fingerprint
    except CleanroomError:
        return ""
