"""The HPKE contexts that bind a sealed key to one room, dataset version, job or
result.

A deposit is sealed to one attested key broker for one dataset version of one
room; a release is sealed to one enclave's ephemeral key for one job; a job's
result key is sealed to each recipient for one ciphertext of one job. Owners'
key agents, the broker, the enclave and the SDK all import these from here.
The purposes are the HPKE domain separation: never change one (a change makes
every key sealed before it unopenable, and two equal purposes would let a key
sealed for one use be opened for another).
"""

from __future__ import annotations

from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.crypto.hpke import SealContext, seal
from cleanroom.identities.identity import PublicIdentity
from cleanroom.identities.keystore import Party

__all__ = [
    "DEPOSIT_PURPOSE",
    "RELEASE_PURPOSE",
    "RESULT_PURPOSE",
    "deposit_context",
    "open_deposit",
    "open_released",
    "release_context",
    "result_context",
    "seal_deposit",
    "seal_release",
]

DEPOSIT_PURPOSE = "cleanroom key deposit"
RELEASE_PURPOSE = "cleanroom key release"
RESULT_PURPOSE = "cleanroom job result"


def deposit_context(room: str, dataset: str, manifest: str) -> SealContext:
    return SealContext(DEPOSIT_PURPOSE, {"room": room, "dataset": dataset, "manifest": manifest})


def release_context(room: str, job: str, dataset: str, manifest: str) -> SealContext:
    return SealContext(
        RELEASE_PURPOSE, {"room": room, "job": job, "dataset": dataset, "manifest": manifest}
    )


def result_context(room: str, job: str, sha256: str, key_id: str) -> SealContext:
    """What a job result's key is sealed to: this room, job, ciphertext and key."""
    return SealContext(
        RESULT_PURPOSE, {"room": room, "job": job, "ciphertext_sha256": sha256, "key_id": key_id}
    )


def seal_deposit(
    key: bytes, broker: PublicIdentity, *, room: str, dataset: str, manifest: str
) -> str:
    """A data key sealed to an attested key broker for one dataset version of one room."""
    context = deposit_context(room, dataset, manifest)
    return b64url_encode(seal(key, broker.encryption_key, context))


def seal_release(
    key: bytes, enclave: PublicIdentity, *, room: str, job: str, dataset: str, manifest: str
) -> str:
    """A data key sealed to one job's enclave (what an owner or the broker releases)."""
    context = release_context(room, job, dataset, manifest)
    return b64url_encode(seal(key, enclave.encryption_key, context))


def open_deposit(party: Party, sealed: str, *, room: str, dataset: str, manifest: str) -> bytes:
    """The broker's side: open a key deposited with it."""
    context = deposit_context(room, dataset, manifest)
    return party.open_sealed(b64url_decode(sealed, what="deposited key"), context)


def open_released(
    party: Party, sealed: str, *, room: str, job: str, dataset: str, manifest: str
) -> bytes:
    """The enclave's side: open a key released to it."""
    context = release_context(room, job, dataset, manifest)
    return party.open_sealed(b64url_decode(sealed, what="released key"), context)
