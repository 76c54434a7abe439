"""Canonical JSON per RFC 8785 (JSON Canonicalization Scheme).

Everything cleanroom signs or hashes is first made canonical here, so the same
logical document always has the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from cleanroom.errors import DeserializationError


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 bytes of ``value``.

    Raises :class:`DeserializationError` for values JSON cannot carry exactly
    (integers beyond 2**53, non-finite floats, non-string keys).
    """
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise DeserializationError(f"value cannot be canonicalised as JSON: {exc}") from exc


def canonical_digest(value: Any) -> str:
    """Lower-case hex SHA-256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
