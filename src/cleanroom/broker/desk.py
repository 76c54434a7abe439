"""The service's key desk: where an enclave asks for its job's keys.

The desk holds no key. It keeps only what the ledger cannot see:

1. a one-time launch token per job, given to the enclave the job runner
   starts, so strangers cannot spend a job's attempts (``launch``);
2. nonces it issued (``challenge``), each for one job, used once, for
   ``NONCE_TTL_MS``, at most ``MAX_OPEN_NONCES`` open per job;
3. each job's key request (evidence binding ``{job, nonce, tee_pubkey}``),
   checked with the room's release decision, then kept for the owners' key
   agents (``requests``) and passed to the attested key broker for the
   inputs deposited with it (:mod:`cleanroom.broker.attested`, in its own
   process: :mod:`cleanroom.broker.link`).

Owners and the broker sign their own ``key.release`` statements; the ledger
re-checks each in full. A request the desk refuses after a valid launch
token is recorded as a ``key.deny`` signed by the service, which ends the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cleanroom.broker.link import Broker
from cleanroom.crypto.encoding import b64url_encode
from cleanroom.errors import AuthenticationError, AuthorizationError, CleanroomError
from cleanroom.governance.model import Job
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import parse_statement, sign_statement
from cleanroom.ledger.log import Ledger

log = logging.getLogger("cleanroom.broker")
NONCE_TTL_MS = 60_000
RETRY_S = 1.0  # after a failed exchange with the broker, ask again for a job this late
MAX_OPEN_NONCES = 8


@dataclass
class _Nonce:
    room: str
    job: str
    expires: int


class KeyDesk:
    def __init__(
        self,
        ledger: Ledger,
        *,
        broker: Broker | None = None,
        clock: Callable[[], int] | None = None,
        ttl_ms: int = NONCE_TTL_MS,
    ) -> None:
        self.ledger = ledger
        self.broker = broker
        self.clock = clock or ledger.clock
        self.ttl_ms = ttl_ms
        self._launches: dict[tuple[str, str], bytes] = {}
        self.nonces: dict[str, _Nonce] = {}
        self._requests: dict[tuple[str, str], dict[str, Any]] = {}
        self._asked: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._lock = threading.Lock()
        # one broker exchange per room at a time, from export to submitted statement:
        # the broker must see each room's ledger only grow
        self._exchanges: dict[str, threading.Lock] = {}
        self._failed: dict[tuple[str, str], float] = {}  # when the broker last failed a job

    # -- launch and challenge -------------------------------------------------------

    def launch(self, room: str, job: str) -> str:
        """A one-time launch token for the enclave the job runner starts."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._launches[(room, job)] = hashlib.sha256(token.encode()).digest()
        return token

    def forget(self, room: str, job: str) -> None:
        with self._lock:
            self._launches.pop((room, job), None)
            self._requests.pop((room, job), None)
            self._asked.pop((room, job), None)
            self._failed.pop((room, job), None)
            for nonce in [n for n, v in self.nonces.items() if (v.room, v.job) == (room, job)]:
                del self.nonces[nonce]

    def check_launch(self, room: str, job: str, token: str) -> None:
        """Raise unless ``token`` is the launch token of this job's enclave."""
        with self._lock:
            self._check_launch(room, job, token)

    def _check_launch(self, room: str, job: str, token: str) -> None:
        expected = self._launches.get((room, job))
        given = hashlib.sha256(token.encode()).digest()
        if expected is None or not hmac.compare_digest(expected, given):
            raise AuthenticationError("no enclave was launched for this job with that token")

    def challenge(self, room: str, job: str, token: str) -> str:
        now = self.clock()
        with self._lock:
            self._check_launch(room, job, token)
            for stale in [n for n, v in self.nonces.items() if v.expires <= now]:
                del self.nonces[stale]
            if sum(1 for v in self.nonces.values() if v.job == job) >= MAX_OPEN_NONCES:
                raise AuthorizationError("too many open challenges for this job")
            nonce = b64url_encode(secrets.token_bytes(32))
            self.nonces[nonce] = _Nonce(room, job, now + self.ttl_ms)
        return nonce

    # -- the request ------------------------------------------------------------------

    def release(
        self,
        room: str,
        job: str,
        *,
        token: str,
        nonce: str,
        enclave: dict[str, Any],
        evidence: dict[str, Any],
    ) -> dict[str, Any]:
        """Check the request with the room's release decision, keep it for the owners'
        key agents and pass it to the key broker. Returns who must still release."""
        with self._lock:
            self._check_launch(room, job, token)
            issued = self.nonces.pop(nonce, None)
        request = {"job": job, "enclave": enclave, "nonce": nonce, "evidence": evidence}
        try:
            if issued is None or (issued.room, issued.job) != (room, job):
                raise AuthenticationError("the nonce was not issued for this job, or already used")
            if issued.expires <= self.clock():
                raise AuthenticationError("the nonce expired: ask for a new challenge")
            # the same decision every owner's agent, the broker and every auditor make
            self.ledger.state(room).check_key_request(request, now_ms=self.clock())
        except CleanroomError as exc:
            self._deny(room, job, str(exc))
            raise AuthorizationError(f"key release denied: {exc}") from exc
        with self._lock:
            self._requests[(room, job)] = request
        self.poll(room, job)
        return self.status(room, job)

    def poll(self, room: str, job: str) -> None:
        """Pass the job's request to the key broker if it holds inputs of the job not
        yet released that it was not asked for (a fresh deposit after a restart)."""
        with self._lock:
            request = self._requests.get((room, job))
        if request is None:
            return
        state = self.ledger.state(room)
        found = state.jobs.get(job)
        if found is None or found.status != "requested":
            return
        if self.broker is None:
            if self._held_by_brokers(state, found):
                self._deny(room, job, "this service runs no key broker")
                raise AuthorizationError("key release denied: this service runs no key broker")
            return
        fingerprint = self.broker.fingerprint
        due = {(fingerprint, name, manifest) for name, manifest in state.due(found, fingerprint)}
        with self._lock:
            asked = self._asked.setdefault((room, job), set())
            failed = time.monotonic() - self._failed.get((room, job), -RETRY_S) < RETRY_S
            exchange = self._exchanges.setdefault(room, threading.Lock())
        new = due - asked
        if not new or failed:
            return
        with exchange:
            try:
                statement = self.broker.answer(self.ledger.export(room), request)
            except CleanroomError as exc:
                log.warning("the key broker could not answer job %s: %s", job[:12], exc)
                with self._lock:
                    self._failed[(room, job)] = time.monotonic()  # asked again in a while
                return  # the job waits, then fails as timed out: no other path
            with self._lock:
                asked |= new  # answered: not asked again for these deposits
            if statement is None:
                return
            try:
                self.ledger.submit(room, [statement], with_receipts=True)
            except CleanroomError as exc:  # the ledger's own check refused the release
                self._deny(room, job, str(exc))
                raise AuthorizationError(f"key release denied: {exc}") from exc
        if parse_statement(statement).kind == "key.deny":
            reason = self.ledger.state(room).job(job).reason or "key release denied"
            raise AuthorizationError(reason)

    def status(self, room: str, job: str) -> dict[str, Any]:
        """The job's status, who must still release, and which of its inputs are
        deposited with a key broker that is no longer running (stale)."""
        state = self.ledger.state(room)
        found = state.job(job)
        names = {f: m.identity.name for f, m in state.members.items()}
        return {
            "status": found.status,
            "waiting_for": [names.get(w, w) for w in found.waiting_for],
            "stale": self.stale(state, found),
        }

    def stale(self, state: RoomState, job: Job) -> list[str]:
        current = self.broker.fingerprint if self.broker is not None else None
        if job.status != "requested":
            return []
        return [
            name
            for name, manifest in state.job_inputs(job.id)
            if (deposit := state.deposits.get(manifest)) is not None
            and deposit.broker is not None
            and deposit.broker.fingerprint != current
            and (name, manifest) not in job.released
        ]

    @staticmethod
    def _held_by_brokers(state: RoomState, job: Job) -> bool:  # by any broker at all
        return any(
            (d := state.deposits.get(manifest)) is not None and d.broker is not None
            for _, manifest in state.job_inputs(job.id)
        )

    def requests(self, room: str) -> list[dict[str, Any]]:
        """Key requests of this room's jobs still waiting for an owner's release:
        what the owners' key agents check and answer. Nothing here is secret."""
        state = self.ledger.state(room)
        with self._lock:
            pending = [r for (r_room, _), r in self._requests.items() if r_room == room]
        return [r for r in pending if state.job(r["job"]).status == "requested"]

    def _deny(self, room: str, job: str, reason: str) -> None:
        body = {"job": job, "reason": reason[:2000]}
        statement = sign_statement(self.ledger.service, room, "key.deny", body, now=self.clock)
        # if the job is no longer waiting for keys, there is nothing to deny on the ledger
        with contextlib.suppress(CleanroomError):
            self.ledger.submit(room, [statement], with_receipts=True)
        self.forget(room, job)
