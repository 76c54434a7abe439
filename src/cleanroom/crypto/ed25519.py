"""Ed25519 signature verification (RFC 8032) through libsodium.

Every Ed25519 verification in cleanroom goes through :func:`verify`, so the
ledger's writer and every auditor accept exactly the same signatures.
libsodium's check is the strict one (canonical S and R, no small-order public
keys) and about twice as fast as the alternatives on these machines; it also
releases the GIL, so bulk verification runs on several cores from threads.
Signing stays with ``cryptography``: an Ed25519 signature is deterministic and
the same whichever library makes it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from cleanroom.errors import IntegrityError


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise :class:`IntegrityError` unless ``signature`` is valid for ``message``."""
    if len(public_key) != 32 or len(signature) != 64:
        raise IntegrityError("signature verification failed")
    try:
        crypto_sign_open(signature + message, public_key)  # the detached check, combined form
    except (BadSignatureError, ValueError, TypeError):
        raise IntegrityError("signature verification failed") from None
