"""The service's check of request signatures (RFC 9421).

How a request is signed, the tag and the covered components are the
protocol's (:mod:`cleanroom.protocol.requests`); this module is the server's
side: the time and replay policy and the nonce store. The server checks, in
order:

(1) the signature headers are present and well formed;
(2) the key id names a party the service knows, and the signature verifies
    over the covered components, the content digest matching the body;
(3) ``created`` is within ``max_skew`` of the server's clock (stale or future
    signatures are refused);
(4) the (key id, nonce) pair was not seen within the replay window (kept
    in a file, so a restart does not reopen it).

``@path`` is verified over the raw request target, never a decoded form. A
service authenticates from the headers (``body=None``) before it reads a body,
then checks the body against the signed ``Content-Digest``
(:func:`check_body_digest`).

Cryptography and canonicalisation are the ``http-message-signatures``
package's; the time and replay policy are ours, with the clock injected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)

from cleanroom.errors import AuthenticationError, OperationalError
from cleanroom.protocol.requests import COVERED, TAG

MAX_SKEW_S = 300


class _Lookup(HTTPSignatureKeyResolver):
    def __init__(self, lookup: Callable[[str], Ed25519PublicKey | None]) -> None:
        self.lookup = lookup

    def resolve_public_key(self, key_id: str) -> Any:
        key = self.lookup(key_id)
        if key is None:
            raise AuthenticationError("the request is signed by an unknown key")
        return key

    def resolve_private_key(self, key_id: str) -> Any:
        raise RuntimeError("a verifier has no private keys")


@dataclass
class _Message:
    method: str
    url: str
    headers: Mapping[str, str]


class NonceCache:
    """Nonces seen per key within the replay window (a signature older than the
    window is refused as stale anyway, so nothing older needs remembering).

    Given a ``path`` the window is kept in SQLite there, so a request captured
    before a restart cannot be replayed after it; without one it lives only in
    memory (for a service embedded in one process).
    """

    def __init__(self, window_s: int = 2 * MAX_SKEW_S, path: Path | None = None) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path), check_same_thread=False
        )
        with self._lock, self._db:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS nonces (key_id TEXT NOT NULL, nonce TEXT NOT NULL, "
                "seen REAL NOT NULL, PRIMARY KEY (key_id, nonce)) WITHOUT ROWID"
            )
        self._added = 0

    def check_and_add(self, key_id: str, nonce: str, now: float) -> None:
        with self._lock:
            try:
                with self._db:
                    self._added += 1
                    if self._added % 1_000 == 0:
                        self._db.execute(
                            "DELETE FROM nonces WHERE seen <= ?", (now - self.window_s,)
                        )
                    row = self._db.execute(
                        "SELECT seen FROM nonces WHERE key_id = ? AND nonce = ?", (key_id, nonce)
                    ).fetchone()
                    if row is not None and row[0] > now - self.window_s:
                        raise AuthenticationError("the request was replayed (nonce already used)")
                    self._db.execute(
                        "INSERT OR REPLACE INTO nonces VALUES (?, ?, ?)", (key_id, nonce, now)
                    )
            except sqlite3.Error as exc:
                raise OperationalError(f"cannot record the request nonce: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def require_signed(headers: Mapping[str, str]) -> None:
    """Refuse a request without signature headers before looking at its body."""
    lowered = {k.lower() for k in headers}
    if "signature" not in lowered or "signature-input" not in lowered:
        raise AuthenticationError("the request is not signed (RFC 9421 signature required)")
    if "content-digest" not in lowered:
        raise AuthenticationError("the request has no Content-Digest header")


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    lookup: Callable[[str], Ed25519PublicKey | None],
    nonces: NonceCache,
    now: Callable[[], float] = time.time,
    max_skew_s: int = MAX_SKEW_S,
) -> str:
    """Authenticate a request; returns the signer's fingerprint or raises
    :class:`AuthenticationError` (see the module notes for the steps).

    ``body=None`` is for streamed uploads: the signature still covers the
    Content-Digest header, and the caller must compare it with the digest of
    the bytes it receives (:func:`content_sha256`).
    """
    require_signed(headers)  # (1)
    verifier = HTTPMessageVerifier(
        signature_algorithm=algorithms.ED25519, key_resolver=_Lookup(lookup)
    )
    try:  # (2)
        results = verifier.verify(
            _Message(method, url, headers),
            max_age=None,
            require_components=COVERED,
            body=body,
            expect_tag=TAG,
        )
    except AuthenticationError:
        raise
    except (HTTPMessageSignaturesException, ValueError, TypeError) as exc:
        raise AuthenticationError(f"the request signature does not verify: {exc}") from exc
    params = results[0].parameters
    key_id, created, nonce = params.get("keyid"), params.get("created"), params.get("nonce")
    if not isinstance(key_id, str) or not isinstance(created, int) or not isinstance(nonce, str):
        raise AuthenticationError("the signature must carry keyid, created and nonce")
    current = now()
    if abs(current - created) > max_skew_s:  # (3)
        raise AuthenticationError("the request signature is stale or from the future")
    nonces.check_and_add(key_id, nonce, current)  # (4)
    return key_id


def content_sha256(headers: Mapping[str, str]) -> str:
    """The SHA-256 (hex) a request's Content-Digest header announces (RFC 9530)."""
    value = {k.lower(): v for k, v in headers.items()}.get("content-digest", "")
    for member in value.split(","):
        name, _, encoded = member.strip().partition("=")
        if name == "sha-256" and encoded.startswith(":") and encoded.endswith(":"):
            try:
                digest = base64.b64decode(encoded[1:-1], validate=True)
            except binascii.Error:
                break
            if len(digest) == 32:
                return digest.hex()
    raise AuthenticationError("the request needs a sha-256 Content-Digest (RFC 9530)")


def check_body_digest(headers: Mapping[str, str], body: bytes) -> None:
    """Refuse a body that is not the one the signed Content-Digest names (for a
    request authenticated with ``body=None`` before its body was read)."""
    if hashlib.sha256(body).hexdigest() != content_sha256(headers):
        raise AuthenticationError("the body does not match the signed Content-Digest")
