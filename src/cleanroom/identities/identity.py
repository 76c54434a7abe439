"""Public identities: who a party is, as the other parties see it.

A public identity binds a name to an Ed25519 signing key and an X25519
encryption key. Its fingerprint is the SHA-256 of the canonical JSON of both
public keys: compare fingerprints out of band (a call, a signed e-mail) before
trusting an identity file. The identity file is self-signed, proving the
holder of the signing key chose this name and encryption key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from cleanroom.crypto.canonical import canonical_digest
from cleanroom.crypto.documents import verify_document
from cleanroom.crypto.keys import decode_encryption_public, decode_signing_public, encode_public
from cleanroom.errors import DeserializationError, IntegrityError
from cleanroom.wire import WireModel, parse_model, read_json_file

IDENTITY_TYP = "cleanroom-identity+jws"
IDENTITY_FORMAT = "cleanroom-identity"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DeserializationError(
            f"party name {name!r} is invalid: use 1-64 letters, digits, spaces, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


def fingerprint_of(signing_key: Ed25519PublicKey, encryption_key: X25519PublicKey) -> str:
    return canonical_digest(
        {"encryption_key": encode_public(encryption_key), "signing_key": encode_public(signing_key)}
    )


def format_fingerprint(fingerprint: str) -> str:
    """Group a hex fingerprint for reading aloud: ``ab12 cd34 ...``."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


class IdentityPayload(WireModel):
    format: Literal["cleanroom-identity"]
    version: Literal[1]
    name: str
    signing_key: str
    encryption_key: str
    fingerprint: str


@dataclass(frozen=True)
class PublicIdentity:
    name: str
    signing_key: Ed25519PublicKey
    encryption_key: X25519PublicKey

    def __post_init__(self) -> None:
        check_name(self.name)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_of(self.signing_key, self.encryption_key)

    def __repr__(self) -> str:
        return f"PublicIdentity(name={self.name!r}, fingerprint={self.fingerprint[:16]}...)"

    def payload(self) -> dict[str, Any]:
        return {
            "format": IDENTITY_FORMAT,
            "version": 1,
            "name": self.name,
            "signing_key": encode_public(self.signing_key),
            "encryption_key": encode_public(self.encryption_key),
            "fingerprint": self.fingerprint,
        }

    def verify(self, document: Any, *, typ: str) -> dict[str, Any]:
        """Verify a document this party signed; returns its payload."""
        return verify_document(document, self.signing_key, kid=self.fingerprint, typ=typ)

    @classmethod
    def from_document(cls, document: Any) -> PublicIdentity:
        """Parse a self-signed identity document; raises on any inconsistency."""
        if not isinstance(document, dict) or not isinstance(document.get("payload"), dict):
            raise DeserializationError("identity file is not a signed identity document")
        wire = parse_model(IdentityPayload, document["payload"], what="identity file")
        identity = cls(
            name=check_name(wire.name),
            signing_key=decode_signing_public(wire.signing_key),
            encryption_key=decode_encryption_public(wire.encryption_key),
        )
        if identity.fingerprint != wire.fingerprint:
            raise IntegrityError("identity file's fingerprint does not match its keys")
        identity.verify(document, typ=IDENTITY_TYP)
        return identity

    @classmethod
    def load(cls, path: Path) -> PublicIdentity:
        return cls.from_document(read_json_file(Path(path), what="identity file"))
