"""Seal small secrets (data keys) to a public key with HPKE (RFC 9180).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode.

Every sealed secret is bound to a :class:`SealContext` through HPKE's
``info``: the purpose, and the room, dataset or job it belongs to. Opening
requires the caller to state the context it expects, never one read from the
sealed blob, so a key sealed for one dataset or room cannot be replayed into
another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cleanroom.crypto.canonical import canonical_json
from cleanroom.errors import IntegrityError

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
SUITE_NAME = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
_INFO_PREFIX = b"cleanroom/hpke/v1\x00"
_ENC_LEN = 32
_TAG_LEN = 16


@dataclass(frozen=True)
class SealContext:
    """What a sealed secret is for. Both sides must agree on every field."""

    purpose: str
    binding: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.purpose:
            raise ValueError("a seal context needs a purpose")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.binding.items()):
            raise TypeError("seal context bindings are str -> str")
        object.__setattr__(self, "binding", MappingProxyType(dict(self.binding)))

    def to_json(self) -> dict[str, object]:
        return {"purpose": self.purpose, "binding": dict(self.binding)}

    def info(self) -> bytes:
        return _INFO_PREFIX + canonical_json(self.to_json())


def seal(secret: bytes, recipient: X25519PublicKey, context: SealContext) -> bytes:
    """HPKE single-shot seal; returns ``enc || ciphertext``."""
    return bytes(SUITE.encrypt(secret, recipient, info=context.info()))


def open_sealed(sealed: bytes, recipient: X25519PrivateKey, context: SealContext) -> bytes:
    """Open what :func:`seal` made for ``context``; raises :class:`IntegrityError`."""
    if len(sealed) < _ENC_LEN + _TAG_LEN:
        raise IntegrityError("decryption failed")
    try:
        return bytes(SUITE.decrypt(sealed, recipient, info=context.info()))
    except (InvalidTag, ValueError):
        raise IntegrityError("decryption failed") from None
