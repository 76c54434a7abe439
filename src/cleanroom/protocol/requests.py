"""How a party signs a request to the service (HTTP Message Signatures, RFC 9421).

Every authenticated request carries a signature tagged :data:`TAG` by a party's
Ed25519 key over the :data:`COVERED` components: ``@method``, ``@path``,
``@query`` and ``content-digest`` (RFC 9530, SHA-256 of the exact body), with
``created``, ``nonce``, ``alg`` and ``keyid`` (the party's fingerprint) as
signed parameters.

``@path`` is the request target exactly as sent, percent-encoding included: the
client signs ``httpx``'s encoded URL and the service verifies the raw target,
never a decoded form. The service's check (skew and replay policy, its nonce
store) is :mod:`cleanroom.service.auth`; both sides take the tag and covered
components from here, so they cannot drift apart.

Cryptography and canonicalisation are the ``http-message-signatures``
package's; the clock and the nonce source are injected.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from cleanroom.crypto.encoding import b64url_encode
from cleanroom.identities.keystore import Party

__all__ = ["COVERED", "TAG", "sign_request"]

TAG = "cleanroom"  # RFC 9421 signed application tag
COVERED = ("@method", "@path", "@query", "content-digest")


class _PartyKeys(HTTPSignatureKeyResolver):
    def __init__(self, party: Party) -> None:
        self.party = party

    def resolve_private_key(self, key_id: str) -> Any:
        if key_id != self.party.fingerprint:
            raise RuntimeError("signing with a key id that is not this party's")
        return self.party.signing_private

    def resolve_public_key(self, key_id: str) -> Any:
        raise RuntimeError("a signer does not resolve public keys")


def sign_request(
    message: Any,
    body: bytes | None,
    party: Party,
    *,
    body_sha256: str | None = None,
    now: Callable[[], float] = time.time,
    rng: Callable[[int], bytes] = os.urandom,
) -> None:
    """Add Signature, Signature-Input and Content-Digest headers to ``message``
    (anything with ``method``, ``url`` and mutable ``headers``, e.g. httpx.Request).

    For a streamed body pass ``body=None`` and its ``body_sha256`` (hex).
    """
    if (body is None) == (body_sha256 is None):
        raise ValueError("give exactly one of body or body_sha256")
    if body_sha256 is not None:
        encoded = base64.b64encode(bytes.fromhex(body_sha256)).decode("ascii")
        message.headers["Content-Digest"] = f"sha-256=:{encoded}:"
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519, key_resolver=_PartyKeys(party)
    )
    signer.sign(
        message,
        key_id=party.fingerprint,
        created=datetime.fromtimestamp(now(), UTC),
        nonce=b64url_encode(rng(16)),
        tag=TAG,
        covered_component_ids=COVERED,
        body=body,
        use_existing_digest=body is None,
    )
