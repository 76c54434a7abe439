"""HPKE sealing: round trips, context binding, tampering, and interoperability
with a second, independent implementation (pyhpke)."""

from __future__ import annotations

import os

import pyhpke
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cleanroom.crypto import SealContext, open_sealed, seal
from cleanroom.crypto.keys import private_bytes, public_bytes
from cleanroom.errors import IntegrityError

CONTEXT = SealContext("dataset-key", {"room": "r1", "dataset": "cards"})


def _pyhpke_suite() -> pyhpke.CipherSuite:
    return pyhpke.CipherSuite.new(
        pyhpke.KEMId.DHKEM_X25519_HKDF_SHA256, pyhpke.KDFId.HKDF_SHA256, pyhpke.AEADId.AES256_GCM
    )


def test_round_trip() -> None:
    key = X25519PrivateKey.generate()
    secret = os.urandom(32)
    assert open_sealed(seal(secret, key.public_key(), CONTEXT), key, CONTEXT) == secret


def test_sealing_is_randomised() -> None:
    key = X25519PrivateKey.generate()
    assert seal(b"k" * 32, key.public_key(), CONTEXT) != seal(b"k" * 32, key.public_key(), CONTEXT)


@pytest.mark.parametrize(
    "other",
    [
        SealContext("dataset-key", {"room": "r2", "dataset": "cards"}),
        SealContext("dataset-key", {"room": "r1", "dataset": "cards2"}),
        SealContext("result-key", {"room": "r1", "dataset": "cards"}),
        SealContext("dataset-key", {"room": "r1"}),
        SealContext("dataset-key", {"room": "r1", "dataset": "cards", "job": "j"}),
    ],
)
def test_a_sealed_key_cannot_be_replayed_into_another_context(other: SealContext) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(os.urandom(32), key.public_key(), CONTEXT)
    with pytest.raises(IntegrityError, match="decryption failed"):
        open_sealed(sealed, key, other)


def test_wrong_recipient_key_fails() -> None:
    sealed = seal(os.urandom(32), X25519PrivateKey.generate().public_key(), CONTEXT)
    with pytest.raises(IntegrityError, match="decryption failed"):
        open_sealed(sealed, X25519PrivateKey.generate(), CONTEXT)


def test_every_flipped_byte_and_every_truncation_fails() -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(os.urandom(32), key.public_key(), CONTEXT)
    for index in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[index] ^= 0x01
        with pytest.raises(IntegrityError):
            open_sealed(bytes(flipped), key, CONTEXT)
    for length in range(len(sealed)):
        with pytest.raises(IntegrityError):
            open_sealed(sealed[:length], key, CONTEXT)


def test_context_binding_is_canonical() -> None:
    a = SealContext("p", {"x": "1", "y": "2"})
    b = SealContext("p", {"y": "2", "x": "1"})
    assert a.info() == b.info()


def test_context_needs_a_purpose() -> None:
    with pytest.raises(ValueError, match="purpose"):
        SealContext("")


def test_ours_seals_pyhpke_opens() -> None:
    key = X25519PrivateKey.generate()
    secret = os.urandom(32)
    sealed = seal(secret, key.public_key(), CONTEXT)
    enc, ciphertext = sealed[:32], sealed[32:]
    suite = _pyhpke_suite()
    recipient_key = suite.kem.deserialize_private_key(private_bytes(key))
    recipient = suite.create_recipient_context(enc, recipient_key, info=CONTEXT.info())
    assert recipient.open(ciphertext) == secret


def test_pyhpke_seals_ours_opens() -> None:
    key = X25519PrivateKey.generate()
    secret = os.urandom(32)
    suite = _pyhpke_suite()
    public = suite.kem.deserialize_public_key(public_bytes(key.public_key()))
    enc, sender = suite.create_sender_context(public, info=CONTEXT.info())
    sealed = enc + sender.seal(secret)
    assert open_sealed(sealed, key, CONTEXT) == secret
