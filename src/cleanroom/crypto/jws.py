"""JSON Web Signatures (RFC 7515) with Ed25519 (RFC 8037, ``alg: EdDSA``).

A strict profile, because a signature format that accepts more than it needs
is an attack surface:

* compact serialization only; the protected header holds exactly ``alg``,
  ``kid`` and ``typ`` (no ``crit``, ``jwk``, ``jku``, ``b64``: nothing that lets
  the token choose how it is verified);
* ``alg`` must be ``EdDSA``; ``typ`` names the kind of statement, so a
  signature over one kind of document never verifies as another;
* ``kid`` must match the key the caller expects;
* detached payloads (RFC 7515 appendix F) are supported so that a readable
  JSON document can carry its own signature beside it.

Verification raises :class:`IntegrityError`; it never returns a bool.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cleanroom.crypto import ed25519
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import b64url_decode, b64url_encode, parse_json
from cleanroom.errors import DeserializationError, IntegrityError

ALGORITHM = "EdDSA"
_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
_MAX_TOKEN = 1 << 24  # 16 MiB: far above any statement, far below memory trouble


def _protected(kid: str, typ: str) -> str:
    if not kid or not typ:
        raise ValueError("kid and typ must be non-empty")
    return b64url_encode(canonical_json({"alg": ALGORITHM, "kid": kid, "typ": typ}))


def sign(payload: bytes, key: Ed25519PrivateKey, *, kid: str, typ: str) -> str:
    """Compact JWS ``header.payload.signature`` over ``payload``."""
    header = _protected(kid, typ)
    body = b64url_encode(payload)
    signing_input = f"{header}.{body}".encode("ascii")
    return f"{header}.{body}.{b64url_encode(key.sign(signing_input))}"


def sign_detached(payload: bytes, key: Ed25519PrivateKey, *, kid: str, typ: str) -> str:
    """Compact JWS with a detached payload: ``header..signature``."""
    header, _, signature = sign(payload, key, kid=kid, typ=typ).split(".")
    return f"{header}..{signature}"


@dataclass(frozen=True)
class ParsedToken:
    """A structurally valid compact JWS whose signature is not yet checked."""

    header: Mapping[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        return str(self.header["kid"])


def parse(token: str, *, typ: str) -> ParsedToken:
    """Split a compact JWS and check its header shape and ``typ``; no signature check.

    Used to find who claims to have signed before looking up their key; follow
    with :func:`verify_parsed`.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or token.count(".") != 2:
        raise IntegrityError("malformed signature: not a compact JWS")
    header_b64, body_b64, signature_b64 = token.split(".")
    header = _header(header_b64, typ)
    try:
        payload = b64url_decode(body_b64, what="JWS payload")
        signature = b64url_decode(signature_b64, what="JWS signature")
    except DeserializationError as exc:
        raise IntegrityError(f"malformed signature: {exc}") from exc
    if len(signature) != 64:
        raise IntegrityError("malformed signature: an Ed25519 signature is 64 bytes")
    return ParsedToken(header, payload, f"{header_b64}.{body_b64}".encode("ascii"), signature)


@functools.lru_cache(maxsize=4096)
def _header(header_b64: str, typ: str) -> Mapping[str, Any]:
    """The checked protected header; cached, since every signer repeats its own."""
    try:
        header = parse_json(b64url_decode(header_b64, what="JWS header"), what="JWS header")
    except DeserializationError as exc:
        raise IntegrityError(f"malformed signature: {exc}") from exc
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise IntegrityError("malformed signature: header must hold exactly alg, kid and typ")
    if header["alg"] != ALGORITHM:
        raise IntegrityError(f"signature algorithm {header['alg']!r} is not allowed")
    if header["typ"] != typ:
        raise IntegrityError(f"signature is for a {header['typ']!r}, expected a {typ!r}")
    if not isinstance(header["kid"], str):
        raise IntegrityError("malformed signature: the key id is not a string")
    return MappingProxyType(header)


def verify_parsed(parsed: ParsedToken, key: Ed25519PublicKey) -> None:
    """Check the Ed25519 signature of a :func:`parse`-d token."""
    ed25519.verify(ed25519.raw_public(key), parsed.signature, parsed.signing_input)


def verify(
    token: str,
    key: Ed25519PublicKey,
    *,
    kid: str,
    typ: str,
    detached_payload: bytes | None = None,
) -> bytes:
    """Verify a compact JWS and return its payload bytes.

    (1) the token has three parts and a sane size; (2) the header is exactly
    ``{alg: EdDSA, kid, typ}`` with the expected ``typ``; (3) the ``kid`` is
    the expected signer's; (4) the Ed25519 signature verifies.
    """
    if detached_payload is not None:
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or parts[1]:
            raise IntegrityError("malformed signature: expected a detached payload")
        token = f"{parts[0]}.{b64url_encode(detached_payload)}.{parts[2]}"
    parsed = parse(token, typ=typ)  # (1), (2)
    if parsed.kid != kid:  # (3)
        raise IntegrityError("signature was made by a different key than expected")
    verify_parsed(parsed, key)  # (4)
    return parsed.payload
