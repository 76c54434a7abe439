"""Strict encodings used on the wire: unpadded base64url (RFC 4648 section 5)
and JSON parsing that refuses ambiguity.

Invariant: every decoder here accepts exactly one spelling of each value, so
two different strings never decode to the same bytes (no malleability through
padding, whitespace, duplicate keys or non-finite numbers).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from cleanroom.errors import DeserializationError

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as JWS uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# the unused low bits of a final partial group must be zero for a canonical spelling
_SPARE_BITS = {2: 0b1111, 3: 0b11}


def b64url_decode(text: str, *, what: str = "value") -> bytes:
    """Decode unpadded base64url, refusing any non-canonical spelling."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise DeserializationError(f"{what} is not unpadded base64url")
    spare = _SPARE_BITS.get(len(text) % 4)
    if spare is not None and _ALPHABET.index(text[-1]) & spare:
        raise DeserializationError(f"{what} is not canonical base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DeserializationError(f"{what} is not unpadded base64url") from exc


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DeserializationError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise DeserializationError(f"JSON value {name} is not allowed")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity
        raise DeserializationError(f"JSON number {text[:40]} is out of range")
    return value


def parse_json(data: bytes | str, *, what: str = "document") -> Any:
    """Parse JSON strictly: UTF-8, no duplicate keys, no NaN or Infinity, no
    number that overflows to infinity."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite,
        )
    except DeserializationError as exc:
        raise DeserializationError(f"{what}: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DeserializationError(f"{what} is not valid JSON: {exc}") from exc
