"""Evidence as it travels, one envelope for every platform, and its binding.

An evidence document is JSON with a ``format`` and that format's fields:

- ``insecure-virtual``: ``token`` (see :mod:`cleanroom.attestation.virtual`);
- ``sev-snp``: ``report`` (base64url, 1184 bytes), ``vek`` (base64url DER or
  PEM of the VCEK/VLEK, optionally followed by the AMD chain) and, optionally,
  ``generation``: the verifier derives the CPU generation from the report and
  its chain, and a ``generation`` given must agree with it;
- ``dcap``: ``quote`` (base64url) and ``collateral`` (dcap-qvl's JSON).

:func:`verify_evidence` dispatches to the platform's pure verifier with the
clock given. :func:`binding` is what report data must hold for the key broker:
SHA-384 of the RFC 8785 form of ``{"job", "nonce", "tee_pubkey"}`` (the
enclave identity's fingerprint, a hash of both its public keys), padded with
zeros to 64 bytes, as the Trustee key broker does.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, StrictStr

from cleanroom.attestation.claims import Claims
from cleanroom.attestation.dcap import verify_dcap
from cleanroom.attestation.snp import verify_snp
from cleanroom.attestation.virtual import verify_virtual
from cleanroom.crypto.canonical import canonical_json
from cleanroom.crypto.encoding import b64url_decode
from cleanroom.errors import AttestationError, CleanroomError
from cleanroom.wire import WireModel, parse_model

MAX_FIELD = 1 << 20


class _Virtual(WireModel):
    format: Literal["insecure-virtual"]
    token: StrictStr = Field(max_length=8192)


class _Snp(WireModel):
    format: Literal["sev-snp"]
    report: StrictStr = Field(max_length=4096)
    vek: StrictStr = Field(max_length=65536)
    generation: Literal["milan", "genoa", "turin"] | None = None


class _Dcap(WireModel):
    format: Literal["dcap"]
    quote: StrictStr = Field(max_length=65536)
    collateral: StrictStr = Field(max_length=MAX_FIELD)


def binding(*, nonce: str, tee_pubkey: str, job: str) -> bytes:
    """The 64 bytes of report data that bind a nonce, an enclave key and a job."""
    document = {"job": job, "nonce": nonce, "tee_pubkey": tee_pubkey}
    return hashlib.sha384(canonical_json(document)).digest() + bytes(16)


def verify_evidence(document: Any, *, now: datetime) -> Claims:
    """Verify an evidence document with its platform's verifier at ``now``."""
    kind = document.get("format") if isinstance(document, dict) else None
    try:
        if kind == "insecure-virtual":
            virtual = parse_model(_Virtual, document, what="evidence")
            return verify_virtual(virtual.token, now=now)
        if kind == "sev-snp":
            snp = parse_model(_Snp, document, what="evidence")
            report = b64url_decode(snp.report, what="SNP report")
            vek = b64url_decode(snp.vek, what="VCEK/VLEK")
            return verify_snp(report, vek, generation=snp.generation, now=now)
        if kind == "dcap":
            dcap = parse_model(_Dcap, document, what="evidence")
            return verify_dcap(b64url_decode(dcap.quote, what="quote"), dcap.collateral, now=now)
    except AttestationError:
        raise
    except CleanroomError as exc:
        raise AttestationError(f"malformed evidence: {exc}") from exc
    raise AttestationError(
        f"unknown evidence format {kind!r}: expected insecure-virtual, sev-snp or dcap"
    )


def check_binding(claims: Claims, *, nonce: str, tee_pubkey: str, job: str) -> None:
    if claims.report_data != binding(nonce=nonce, tee_pubkey=tee_pubkey, job=job):
        raise AttestationError(
            "the evidence's report data does not bind this nonce, enclave key and job"
        )
