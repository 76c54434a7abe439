"""The key broker: a challenge-evidence protocol for releasing data keys.

A data owner deposits each dataset version's data key HPKE-sealed to the
broker (the service's encryption key) with its own release policy, as a
``key.deposit`` statement on the room's ledger. A job's enclave then:

1. asks for a nonce (``challenge``), presenting the launch token the job
   runner gave it, so strangers cannot spend a job's attempts;
2. sends evidence whose report data binds ``{job, nonce, tee_pubkey}``
   (:func:`cleanroom.attestation.binding`) with its ephemeral identity;
3. receives each input's key re-sealed (HPKE) to that ephemeral key, bound to
   the room, job, dataset and manifest.

Before any key leaves, the broker records a ``key.release`` statement, and
the room's state machine re-checks everything on it: the evidence verifies
and binds this nonce, key and job; the measurement is approved (and insecure
virtual only if the contract allows it); the analysis is active; every owner
consents and its deposit's policy admits this platform and measurement; the
nonce is new. No entry, no key. Any refusal after a valid launch token is
recorded as a ``key.deny`` statement with its reason, which ends the job.

In this release the broker runs inside the service process and its key sits
in the service's data directory; in production it belongs in its own TEE
(see docs/jobs.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.crypto.hpke import SealContext, open_sealed, seal
from cleanroom.datasets.manifest import key_id_of
from cleanroom.errors import (
    AuthenticationError,
    AuthorizationError,
    CleanroomError,
    GovernanceError,
)
from cleanroom.governance.state import RoomState
from cleanroom.governance.statements import sign_statement
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party
from cleanroom.ledger.log import Ledger

DEPOSIT_PURPOSE = "cleanroom key deposit"
RELEASE_PURPOSE = "cleanroom key release"
NONCE_TTL_MS = 60_000
MAX_OPEN_NONCES = 8


def deposit_context(room: str, dataset: str, manifest: str) -> SealContext:
    return SealContext(DEPOSIT_PURPOSE, {"room": room, "dataset": dataset, "manifest": manifest})


def release_context(room: str, job: str, dataset: str, manifest: str) -> SealContext:
    return SealContext(
        RELEASE_PURPOSE, {"room": room, "job": job, "dataset": dataset, "manifest": manifest}
    )


def seal_deposit(
    key: bytes, broker: PublicIdentity, *, room: str, dataset: str, manifest: str
) -> str:
    """A data key sealed to the broker for one dataset version of one room."""
    context = deposit_context(room, dataset, manifest)
    return b64url_encode(seal(key, broker.encryption_key, context))


def open_released(
    party: Party, sealed: str, *, room: str, job: str, dataset: str, manifest: str
) -> bytes:
    """The enclave's side: open a key the broker released to it."""
    context = release_context(room, job, dataset, manifest)
    return party.open_sealed(b64url_decode(sealed, what="released key"), context)


@dataclass
class _Nonce:
    room: str
    job: str
    expires: int


class KeyBroker:
    def __init__(
        self,
        ledger: Ledger,
        *,
        clock: Callable[[], int] | None = None,
        ttl_ms: int = NONCE_TTL_MS,
    ) -> None:
        self.ledger = ledger
        self.clock = clock or ledger.clock
        self.ttl_ms = ttl_ms
        self._launches: dict[tuple[str, str], bytes] = {}
        self._nonces: dict[str, _Nonce] = {}
        self._requests: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def party(self) -> Party:
        return self.ledger.service

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
            for nonce in [n for n, v in self._nonces.items() if (v.room, v.job) == (room, job)]:
                del self._nonces[nonce]

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
            for stale in [n for n, v in self._nonces.items() if v.expires <= now]:
                del self._nonces[stale]
            if sum(1 for v in self._nonces.values() if v.job == job) >= MAX_OPEN_NONCES:
                raise AuthorizationError("too many open challenges for this job")
            nonce = b64url_encode(secrets.token_bytes(32))
            self._nonces[nonce] = _Nonce(room, job, now + self.ttl_ms)
        return nonce

    # -- release ----------------------------------------------------------------------

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
        """Check the request, release the inputs deposited with the broker (recording
        ``key.release`` first) and keep the request for the owners' key agents,
        which release the inputs they hold. Returns what was released and who
        must still release."""
        with self._lock:
            self._check_launch(room, job, token)
            issued = self._nonces.pop(nonce, None)
        try:
            if issued is None or (issued.room, issued.job) != (room, job):
                raise AuthenticationError("the nonce was not issued for this job, or already used")
            if issued.expires <= self.clock():
                raise AuthenticationError("the nonce expired: ask for a new challenge")
            identity = PublicIdentity.from_document(enclave)
            state = self.ledger.state(room)
            request = {"job": job, "enclave": enclave, "nonce": nonce, "evidence": evidence}
            # the same checks an owner's agent and every auditor make, before anything
            state.check_key_request(request, now_ms=self.clock())
            mine = state.releasable(state.job(job), None)
            released = [
                {
                    "dataset": name,
                    "manifest": m,
                    "sealed": b64url_encode(
                        seal(
                            self._open_deposit(state, name, m),
                            identity.encryption_key,
                            release_context(room, job, name, m),
                        )
                    ),
                }
                for name, m in mine
            ]
            seq = None
            if mine:
                body = {
                    **request,
                    "inputs": [{"dataset": name, "manifest": m} for name, m in mine],
                    "sealed_keys": released,
                }
                statement = sign_statement(self.party, room, "key.release", body, now=self.clock)
                (entry,) = self.ledger.submit(room, [statement], with_receipts=True)
                seq = entry.seq
        except CleanroomError as exc:
            self._deny(room, job, str(exc))
            raise AuthorizationError(f"key release denied: {exc}") from exc
        with self._lock:
            self._requests[(room, job)] = request
        waiting = self.ledger.state(room).job(job).waiting_for
        return {"seq": seq, "keys": released, "waiting_for": list(waiting)}

    def requests(self, room: str) -> list[dict[str, Any]]:
        """Key requests of this room's jobs still waiting for an owner's release:
        what the owners' key agents check and answer. Nothing here is secret."""
        state = self.ledger.state(room)
        with self._lock:
            pending = [r for (r_room, _), r in self._requests.items() if r_room == room]
        return [r for r in pending if state.job(r["job"]).status == "requested"]

    def _open_deposit(self, state: RoomState, dataset: str, manifest: str) -> bytes:
        deposit = state.deposits.get(manifest)
        if deposit is None or deposit.sealed_key is None:
            raise GovernanceError(f"the owner of {dataset!r} has deposited no key for it")
        sealed = b64url_decode(deposit.sealed_key, what="deposited key")
        key = open_sealed(
            sealed, self.party.encryption_private, deposit_context(state.room, dataset, manifest)
        )
        if key_id_of(key) != state.version(dataset, manifest).manifest.key_id:
            raise GovernanceError(f"the key deposited for {dataset!r} is not the manifest's key")
        return key

    def _deny(self, room: str, job: str, reason: str) -> None:
        body = {"job": job, "reason": reason[:2000]}
        statement = sign_statement(self.party, room, "key.deny", body, now=self.clock)
        # if the job is no longer waiting for keys, there is nothing to deny on the ledger
        with contextlib.suppress(CleanroomError):
            self.ledger.submit(room, [statement], with_receipts=True)
        self.forget(room, job)
