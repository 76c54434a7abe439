"""A party's private keys on disk, and the :class:`Party` that holds them.

Keystore directory layout::

    DIR/keystore.json   private keys, mode 0600 (refused if group/other can read)
    DIR/identity.json   the self-signed public identity, safe to share

``keystore.json`` optionally encrypts the keys under a passphrase: Argon2id
(RFC 9106, second recommended parameter set: 64 MiB, t=3, p=4) derives an
AES-256-GCM key, and the file's other fields are the associated data, so no
field can be edited without the passphrase noticing. KDF parameters read from
a file are bounded, so a crafted keystore cannot make loading exhaust memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.documents import sign_document
from cleanroom.crypto.encoding import b64url_decode, b64url_encode, parse_json
from cleanroom.crypto.hpke import SealContext, open_sealed
from cleanroom.crypto.keys import (
    encryption_private_from_bytes,
    private_bytes,
    signing_private_from_bytes,
)
from cleanroom.errors import DeserializationError, IntegrityError, KeystoreError, StorageError
from cleanroom.fs import write_file, write_private_file
from cleanroom.identities.identity import IDENTITY_TYP, PublicIdentity, check_name
from cleanroom.wire import WireModel, parse_model, pretty_json, read_json_file

KEYSTORE_FILE = "keystore.json"
IDENTITY_FILE = "identity.json"
KEYSTORE_FORMAT = "cleanroom-keystore"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. Defaults follow RFC 9106 section 4, second recommendation."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def check(self) -> None:
        if not 8 * 1024 <= self.memory_kib <= 1024 * 1024:
            raise KeystoreError("keystore KDF memory must be between 8 MiB and 1 GiB")
        if not 1 <= self.iterations <= 16 or not 1 <= self.lanes <= 16:
            raise KeystoreError("keystore KDF iterations and lanes must be between 1 and 16")


class _Protection(WireModel):
    kdf: Literal["argon2id", "none"]
    salt: str | None = None
    memory_kib: int | None = None
    iterations: int | None = None
    lanes: int | None = None
    nonce: str | None = None


class _KeystoreFile(WireModel):
    format: Literal["cleanroom-keystore"]
    version: Literal[1]
    name: str
    fingerprint: str
    protection: _Protection
    secret: str


class _Secret(WireModel):
    signing_key: str
    encryption_key: str


def _kek(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    return Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(passphrase.encode("utf-8"))


def _associated_data(fields: Mapping[str, Any]) -> bytes:
    return b"cleanroom/keystore/v1\x00" + canonical_json(
        {k: v for k, v in fields.items() if k != "secret"}
    )


@dataclass(frozen=True)
class Party:
    """A party in a room, holding its private signing and encryption keys."""

    name: str
    signing_private: Ed25519PrivateKey
    encryption_private: X25519PrivateKey

    def __repr__(self) -> str:
        return f"Party(name={self.name!r}, fingerprint={self.identity.fingerprint[:16]}...)"

    @classmethod
    def create(cls, name: str) -> Party:
        return cls(check_name(name), Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @cached_property
    def identity(self) -> PublicIdentity:
        """The public half; derived once (its fingerprint is on every signature's path)."""
        return PublicIdentity(
            self.name, self.signing_private.public_key(), self.encryption_private.public_key()
        )

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    def sign_document(self, payload: Mapping[str, Any], *, typ: str) -> dict[str, Any]:
        return sign_document(payload, self.signing_private, kid=self.fingerprint, typ=typ)

    def open_sealed(self, sealed: bytes, context: SealContext) -> bytes:
        return open_sealed(sealed, self.encryption_private, context)

    def identity_document(self) -> dict[str, Any]:
        return self.sign_document(self.identity.payload(), typ=IDENTITY_TYP)

    # -- persistence ---------------------------------------------------------

    def to_keystore(
        self,
        passphrase: str | None,
        *,
        params: KdfParams | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> dict[str, Any]:
        secret = canonical_json(
            {
                "encryption_key": b64url_encode(private_bytes(self.encryption_private)),
                "signing_key": b64url_encode(private_bytes(self.signing_private)),
            }
        )
        fields: dict[str, Any] = {
            "format": KEYSTORE_FORMAT,
            "version": 1,
            "name": self.name,
            "fingerprint": self.fingerprint,
        }
        if passphrase is None:
            fields["protection"] = {"kdf": "none"}
            return {**fields, "secret": b64url_encode(secret)}
        if not passphrase:
            raise ValueError("an empty passphrase protects nothing; pass None for no passphrase")
        params = params or KdfParams()
        params.check()
        salt, nonce = rng(16), rng(12)
        fields["protection"] = {
            "kdf": "argon2id",
            "salt": b64url_encode(salt),
            "memory_kib": params.memory_kib,
            "iterations": params.iterations,
            "lanes": params.lanes,
            "nonce": b64url_encode(nonce),
        }
        sealed = AESGCM(_kek(passphrase, salt, params)).encrypt(
            nonce, secret, _associated_data(fields)
        )
        return {**fields, "secret": b64url_encode(sealed)}

    @classmethod
    def from_keystore(cls, document: Any, passphrase: str | None) -> Party:
        """Parse a keystore document; ``passphrase`` is needed if it is protected."""
        wire = parse_model(_KeystoreFile, document, what="keystore")
        protection = wire.protection
        secret = b64url_decode(wire.secret, what="keystore secret")
        if protection.kdf == "argon2id":
            if passphrase is None:
                raise KeystoreError("keystore is protected by a passphrase; none was given")
            if protection.salt is None or protection.nonce is None:
                raise DeserializationError("keystore is invalid: argon2id needs salt and nonce")
            params = KdfParams(
                memory_kib=protection.memory_kib or 0,
                iterations=protection.iterations or 0,
                lanes=protection.lanes or 0,
            )
            params.check()
            salt = b64url_decode(protection.salt, what="keystore salt")
            nonce = b64url_decode(protection.nonce, what="keystore nonce")
            if not 16 <= len(salt) <= 64 or len(nonce) != 12:
                raise DeserializationError("keystore is invalid: bad salt or nonce length")
            try:
                secret = AESGCM(_kek(passphrase, salt, params)).decrypt(
                    nonce, secret, _associated_data(document)
                )
            except InvalidTag:
                raise IntegrityError(
                    "wrong passphrase, or the keystore file was modified"
                ) from None
        keys = parse_model(_Secret, parse_json(secret, what="keystore keys"), what="keystore keys")
        party = cls(
            name=check_name(wire.name),
            signing_private=signing_private_from_bytes(
                b64url_decode(keys.signing_key, what="keystore signing key")
            ),
            encryption_private=encryption_private_from_bytes(
                b64url_decode(keys.encryption_key, what="keystore encryption key")
            ),
        )
        if party.fingerprint != wire.fingerprint:
            raise KeystoreError("keystore is corrupt: its keys do not match its fingerprint")
        return party

    def save(
        self, directory: Path, *, passphrase: str | None = None, params: KdfParams | None = None
    ) -> Path:
        """Write a new keystore directory; never overwrites an existing keystore."""
        directory = Path(directory)
        if (directory / KEYSTORE_FILE).exists():
            raise KeystoreError(
                f"{directory / KEYSTORE_FILE} already exists; refusing to overwrite"
            )
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {directory}: {exc.strerror}") from exc
        keystore = self.to_keystore(passphrase, params=params)
        write_private_file(directory / KEYSTORE_FILE, canonical_json(keystore) + b"\n")
        write_file(directory / IDENTITY_FILE, pretty_json(self.identity_document()))
        return directory

    @classmethod
    def load(cls, directory: Path, *, passphrase: str | None = None) -> Party:
        """Load a keystore directory, refusing files others can read."""
        path = Path(directory) / KEYSTORE_FILE
        if not path.exists():
            raise KeystoreError(f"no keystore at {directory} (expected {path})")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeystoreError(
                f"keystore {path} is accessible by other users (mode {mode:04o}); "
                f"run: chmod 600 {path}"
            )
        # others who can write the directory can swap the keystore for one of theirs
        folder = Path(directory)
        folder_mode = stat.S_IMODE(folder.stat().st_mode)
        if folder_mode & 0o022:
            raise KeystoreError(
                f"keystore directory {folder} can be written by other users (mode "
                f"{folder_mode:04o}); run: chmod go-w {folder}"
            )
        return cls.from_keystore(read_json_file(path, what="keystore"), passphrase)

    @staticmethod
    def is_protected(directory: Path) -> bool:
        document = read_json_file(Path(directory) / KEYSTORE_FILE, what="keystore")
        wire = parse_model(_KeystoreFile, document, what="keystore")
        return wire.protection.kdf != "none"
