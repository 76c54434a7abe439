"""Signed JSON documents: ``{"payload": {...}, "signature": "<detached JWS>"}``.

The signature is a compact JWS (see :mod:`cleanroom.crypto.jws`) whose
detached payload is the RFC 8785 canonical JSON of ``payload``. The file stays
readable, and any change to any value of the payload breaks the signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cleanroom.crypto import jws
from cleanroom.crypto.canonical import canonical_json
from cleanroom.errors import DeserializationError, IntegrityError


def sign_document(
    payload: Mapping[str, Any], key: Ed25519PrivateKey, *, kid: str, typ: str
) -> dict[str, Any]:
    body = dict(payload)
    return {
        "payload": body,
        "signature": jws.sign_detached(canonical_json(body), key, kid=kid, typ=typ),
    }


def verify_document(document: Any, key: Ed25519PublicKey, *, kid: str, typ: str) -> dict[str, Any]:
    """Verify a signed document and return its payload; raises :class:`IntegrityError`."""
    if (
        not isinstance(document, dict)
        or set(document) != {"payload", "signature"}
        or not isinstance(document["payload"], dict)
        or not isinstance(document["signature"], str)
    ):
        raise IntegrityError("malformed signed document: expected exactly payload and signature")
    payload: dict[str, Any] = document["payload"]
    try:
        body = canonical_json(payload)
    except DeserializationError as exc:
        raise IntegrityError(f"malformed signed document: {exc}") from exc
    jws.verify(document["signature"], key, kid=kid, typ=typ, detached_payload=body)
    return payload
