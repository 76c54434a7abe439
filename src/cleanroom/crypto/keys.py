"""Raw key encodings: 32-byte Ed25519 (RFC 8032) and X25519 (RFC 7748) keys.

Public keys travel as unpadded base64url of their raw 32 bytes, the same form
JWK uses for OKP keys (RFC 8037).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cleanroom.crypto.encoding import b64url_decode, b64url_encode
from cleanroom.errors import DeserializationError

_RAW = serialization.Encoding.Raw


def public_bytes(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, serialization.PublicFormat.Raw)


def private_bytes(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def encode_public(key: Ed25519PublicKey | X25519PublicKey) -> str:
    return b64url_encode(public_bytes(key))


def _raw32(text: str, what: str) -> bytes:
    raw = b64url_decode(text, what=what)
    if len(raw) != 32:
        raise DeserializationError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def decode_signing_public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw32(text, "signing key"))


def decode_encryption_public(text: str) -> X25519PublicKey:
    raw = _raw32(text, "encryption key")
    return X25519PublicKey.from_public_bytes(raw)


def signing_private_from_bytes(raw: bytes) -> Ed25519PrivateKey:
    if len(raw) != 32:
        raise DeserializationError("signing private key must be 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


def encryption_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    if len(raw) != 32:
        raise DeserializationError("encryption private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)
