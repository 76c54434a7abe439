"""A data owner's key agent: owner-held key release (the default).

The data key of a dataset published with ``release="owner"`` never leaves
the owner's machine except sealed to one attested enclave for one approved
job. It is kept in the owner's key vault (:class:`KeyVault`), HPKE-sealed to
the owner's own encryption key, so it is as safe at rest as the keystore.

The agent needs no inbound connection. It follows the room through the
service with the SDK (every entry verified, the service key pinned, the tree
head checked against what this party saw before) and, for each key request
of a job that reads one of its datasets:

1. verifies the whole ledger itself and takes the room state from it, never
   from the service's word (a forged or rolled-back ledger is refused);
2. decides with the room's own release decision
   (:meth:`cleanroom.governance.state.RoomState.check_key_request`): the
   evidence verifies now and binds the job, the nonce and the enclave's
   ephemeral key; the measurement is approved by the room and, if the agent
   was given one, by the owner's local policy; the analysis is accepted, the
   owner's consent stands, the privacy rules and budgets allow it;
3. signs ``key.release`` itself, carrying the data key HPKE-sealed to the
   enclave's key and bound to room, job, dataset and manifest; the service
   and every auditor re-check that statement in full. A request the room's
   rules refuse is answered with a ``key.deny`` signed by the owner; a
   request whose evidence does not verify is ignored (the operator could
   forge such a request to make the owner deny a real job).

Nothing falls back to another path: without the agent's release, the job
waits, then fails with ``key release timed out``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cleanroom.attestation import verify_evidence
from cleanroom.broker.memory import ReleaseMemory, WithheldError
from cleanroom.client import Room
from cleanroom.client.vault import KeyVault
from cleanroom.datasets.manifest import key_id_of
from cleanroom.errors import AttestationError, CleanroomError, GovernanceError, StorageError
from cleanroom.governance.model import KeyRequestError
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import sign_statement
from cleanroom.identities.identity import PublicIdentity
from cleanroom.protocol.sealing import seal_release

log = logging.getLogger("cleanroom.agent")


@dataclass(frozen=True)
class Answer:
    """What the agent did with one key request."""

    job: str
    action: str  # "released" | "denied"
    detail: str = ""


class KeyAgent:
    """Answers the key requests of one room for one data owner."""

    def __init__(
        self,
        room: Room,
        vault: KeyVault,
        *,
        measurements: frozenset[str] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.room = room
        self.vault = vault
        self.party = room.client.party
        self.measurements = measurements  # the owner's local policy, on top of the room's
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._seen: set[str] = set()  # requests already examined
        # what this owner released, kept beside its vault: a release the operator
        # keeps off the ledger is never followed by another (cleanroom.broker.memory)
        self.released = ReleaseMemory(vault.directory / RELEASED_FILE)

    def requests(self) -> list[dict[str, Any]]:
        found = self.room.client._call("GET", f"/v1/rooms/{self.room.id}/key-requests")
        return list(found) if isinstance(found, list) else []

    def step(self) -> list[Answer]:
        """One pass: answer every open request for this owner's datasets. The whole
        ledger is verified only when a request not seen before is waiting (a job can
        wait minutes for another owner; its request is not re-examined every poll)."""
        pending = {
            _request_key(r): r for r in self.requests() if isinstance(r, dict)
        }  # the operator's word
        new = {k: r for k, r in pending.items() if k not in self._seen}
        if not new:
            return []
        state = self.room.audit.verify().state  # (1) the agent's own view of the ledger
        answers = []
        me = self.party.fingerprint
        for key, request in new.items():
            job = state.jobs.get(str(request.get("job", "")))
            mine = state.due(job, me) if job is not None else []
            answer = self._answer(state, request, mine) if mine else None
            if answer is _WAIT:
                continue  # examined again once an earlier release is on the ledger
            self._seen.add(key)  # answered, ignored or not ours: never examined again
            if answer is not None:
                answers.append(answer)
        return answers

    def _answer(
        self, state: RoomState, request: dict[str, Any], mine: list[tuple[str, str]]
    ) -> Answer | None:
        job_id = str(request.get("job", ""))
        try:  # never a second release while one is off the ledger
            again = self.released.check(
                state, job_id, _fingerprint(request), str(request.get("nonce", ""))
            )
        except WithheldError as exc:
            log.warning("key agent: %s", exc)
            return None
        except GovernanceError:
            return _WAIT
        if again is not None:  # signed before, not on the ledger yet: the same, again
            self.room._submit(again)
            return Answer(job_id, "released", "again")
        try:
            state.check_key_request(request, now_ms=self.clock())  # (2) the room's decision
            self._local_policy(request)
        except (AttestationError, KeyRequestError) as exc:
            # the request itself is bad: anyone (the operator) could have made it, so it
            # says nothing about the job, which a genuine request may still serve
            log.warning("ignored a key request for job %s: %s", job_id[:12], exc)
            return None
        except GovernanceError as exc:
            return self._deny(job_id, str(exc))
        return self._release(state, job_id, request, mine)

    def _deny(self, job_id: str, reason: str) -> Answer | None:
        body = {"job": job_id, "reason": reason[:2000]}
        try:
            self.room._submit(sign_statement(self.party, self.room.id, "key.deny", body))
        except CleanroomError as failure:
            log.warning("could not deny job %s: %s", job_id[:12], failure)
            return None
        return Answer(job_id, "denied", reason)

    def _release(
        self, state: RoomState, job_id: str, request: dict[str, Any], mine: list[tuple[str, str]]
    ) -> Answer:
        enclave = _enclave(request)
        sealed = []
        for dataset, manifest in mine:
            key = self.vault.open(self.room.id, dataset, manifest)
            if key_id_of(key) != state.version(dataset, manifest).manifest.key_id:
                raise StorageError(f"the vault's key for {dataset!r} is not its manifest's key")
            sealed.append(
                {
                    "dataset": dataset,
                    "manifest": manifest,
                    "sealed": seal_release(
                        key,
                        enclave,
                        room=self.room.id,
                        job=job_id,
                        dataset=dataset,
                        manifest=manifest,
                    ),
                }
            )
        body = {
            "job": job_id,
            "enclave": request["enclave"],
            "nonce": request["nonce"],
            "evidence": request["evidence"],
            "inputs": [{"dataset": d, "manifest": m} for d, m in mine],
            "sealed_keys": sealed,
        }
        # (3) signed by the owner; the service and every auditor re-check it in full
        statement = sign_statement(self.party, self.room.id, "key.release", body)
        self.released.remember(self.room.id, job_id, enclave.fingerprint, body["nonce"], statement)
        self.room._submit(statement)
        return Answer(job_id, "released", ", ".join(d for d, _ in mine))

    def _local_policy(self, request: dict[str, Any]) -> None:
        """The owner's own limits on top of the room's (measurements it accepts)."""
        if self.measurements is None:
            return
        now = datetime.fromtimestamp(self.clock() / 1000, UTC)  # the clock that decided
        if _measurement_of(request, now) not in self.measurements:
            raise GovernanceError("this measurement is not in the owner's local release policy")

    def serve(self, *, poll_s: float = 0.5, stop: threading.Event | None = None) -> None:
        """Answer requests until ``stop`` is set; errors are logged, never fatal."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                for answer in self.step():
                    log.info("%s job %s: %s", answer.action, answer.job[:12], answer.detail)
            except Exception as exc:  # noqa: BLE001 - an agent outlives any one bad request
                log.warning("key agent: %s", exc)
            stop.wait(poll_s)


def _request_key(request: dict[str, Any]) -> str:
    return json.dumps(request, sort_keys=True, default=str)


_WAIT = Answer("", "wait")  # not answered now: an earlier release must be recorded first
RELEASED_FILE = "released.json"


def _fingerprint(request: dict[str, Any]) -> str:
    try:
        return _enclave(request).fingerprint
    except (CleanroomError, KeyError, TypeError):
        return ""


def _enclave(request: dict[str, Any]) -> PublicIdentity:
    return PublicIdentity.from_document(request["enclave"])


def _measurement_of(request: dict[str, Any], now: datetime) -> str:
    return verify_evidence(request["evidence"], now=now).measurement
