"""Evidence as it travels, one envelope for every platform, and its binding.

An evidence document is JSON with a ``format`` and that format's fields:

- ``insecure-virtual``: ``token`` (see :mod:`cleanroom.attestation.virtual`);
- ``sev-snp``: ``report`` (base64url, 1184 bytes), ``vek`` (base64url DER or
  PEM of the VCEK/VLEK, optionally followed by the AMD chain) and, optionally,
  ``generation``: the verifier derives the CPU generation from the report and
  its chain, and a ``generation`` given must agree with it;
- ``dcap``: ``quote`` (base64url) and ``collateral`` (dcap-qvl's JSON);
- ``azure-snp-hcl``: an Azure confidential VM's ``hcl_report`` and ``vek``
  (base64url); ``azure-tdx-hcl``: its ``hcl_report``, ``quote`` and
  ``collateral``. Their report data for the binding is the runtime claims'
  ``user-data`` (:func:`azure_user_data`).

:func:`verify_evidence` dispatches to the platform's pure verifier with the
clock given. :func:`binding` is what report data must hold for the key broker:
SHA-384 of the RFC 8785 form of ``{"job", "nonce", "tee_pubkey"}`` (the
enclave identity's fingerprint, a hash of both its public keys), padded with
zeros to 64 bytes, as the Trustee key broker does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import Field, StrictStr

from cleanroom.attestation.azure import bind_azure_tdx_hcl, verify_azure_hcl
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


class _AzureSnp(WireModel):
    format: Literal["azure-snp-hcl"]
    hcl_report: StrictStr = Field(max_length=65536)
    vek: StrictStr = Field(max_length=65536)
    generation: Literal["milan", "genoa", "turin"] | None = None


class _AzureTdx(WireModel):
    format: Literal["azure-tdx-hcl"]
    hcl_report: StrictStr = Field(max_length=65536)
    quote: StrictStr = Field(max_length=65536)
    collateral: StrictStr = Field(max_length=MAX_FIELD)


class _Dcap(WireModel):
    format: Literal["dcap"]
    quote: StrictStr = Field(max_length=65536)
    collateral: StrictStr = Field(max_length=MAX_FIELD)


class Attester(Protocol):
    """What produces evidence inside a TEE (or the insecure virtual platform)."""

    platform: str

    def attest(self, report_data: bytes, host_data: str = "") -> dict[str, Any]: ...


def binding(*, nonce: str, tee_pubkey: str, job: str) -> bytes:
    """The 64 bytes of report data that bind a nonce, an enclave key and a job."""
    document = {"job": job, "nonce": nonce, "tee_pubkey": tee_pubkey}
    return hashlib.sha384(canonical_json(document)).digest() + bytes(16)


def broker_binding(*, nonce: str, tee_pubkey: str) -> bytes:
    """The report data of a key broker's evidence: its key and a depositor's nonce,
    under a ``role`` no enclave's binding has (an enclave's evidence, whatever job
    it names, is never a broker's)."""
    document = {"nonce": nonce, "role": "key broker", "tee_pubkey": tee_pubkey}
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
            vek = certificates(b64url_decode(snp.vek, what="VCEK/VLEK"))
            return verify_snp(report, vek, generation=snp.generation, now=now)
        if kind == "dcap":
            dcap = parse_model(_Dcap, document, what="evidence")
            return verify_dcap(b64url_decode(dcap.quote, what="quote"), dcap.collateral, now=now)
        if kind == "azure-snp-hcl":
            snp_hcl = parse_model(_AzureSnp, document, what="evidence")
            hcl = b64url_decode(snp_hcl.hcl_report, what="HCL report")
            vek = certificates(b64url_decode(snp_hcl.vek, what="VCEK/VLEK"))
            claims = verify_azure_hcl(hcl, vek, now=now, generation=snp_hcl.generation)
            return azure_user_data(claims)
        if kind == "azure-tdx-hcl":
            tdx_hcl = parse_model(_AzureTdx, document, what="evidence")
            quote = verify_dcap(
                b64url_decode(tdx_hcl.quote, what="quote"), tdx_hcl.collateral, now=now
            )
            hcl = b64url_decode(tdx_hcl.hcl_report, what="HCL report")
            return azure_user_data(bind_azure_tdx_hcl(hcl, quote))
    except AttestationError:
        raise
    except CleanroomError as exc:
        raise AttestationError(f"malformed evidence: {exc}") from exc
    raise AttestationError(
        f"unknown evidence format {kind!r}: expected insecure-virtual, sev-snp, dcap, "
        "azure-snp-hcl or azure-tdx-hcl"
    )


def certificates(vek: bytes) -> bytes:
    """The VCEK/VLEK and its chain as DER or PEM. Azure Container Instances (and
    Azure's THIM service) hand them out as JSON: ``{"vcekCert": PEM,
    "certificateChain": PEM, "tcbm": ...}``; that form becomes the PEM it holds."""
    if not vek.lstrip().startswith(b"{"):
        return vek
    try:
        document = json.loads(vek)
        vcek, chain = document["vcekCert"], document.get("certificateChain", "")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AttestationError(f"the JSON certificate document is not Azure's: {exc}") from exc
    if not isinstance(vcek, str) or not isinstance(chain, str):
        raise AttestationError("the JSON certificate document's certificates are not PEM text")
    return (vcek + "\n" + chain).encode()


def azure_user_data(claims: Claims) -> Claims:
    """An Azure confidential VM's own report data. The guest cannot set the
    hardware report's report data (the HCL fills it with a hash of the runtime
    claims); it sets ``user-data`` (64 bytes, hex) in the runtime claims when it
    asks the vTPM for a fresh report, and the hardware report binds the runtime
    claims by that hash. So ``user-data`` is what binds the nonce, key and job."""
    try:
        runtime = json.loads(claims.runtime_claims or b"")
        user = runtime["user-data"] if isinstance(runtime, dict) else None
        data = bytes.fromhex(user) if isinstance(user, str) else b""
    except (ValueError, KeyError) as exc:
        raise AttestationError(f"the HCL runtime claims carry no user data: {exc}") from exc
    if len(data) != 64:
        raise AttestationError("the HCL runtime claims' user data is not 64 bytes of hex")
    return replace(claims, report_data=data)


def check_binding(claims: Claims, *, nonce: str, tee_pubkey: str, job: str) -> None:
    if claims.report_data != binding(nonce=nonce, tee_pubkey=tee_pubkey, job=job):
        raise AttestationError(
            "the evidence's report data does not bind this nonce, enclave key and job"
        )


def check_broker_binding(claims: Claims, *, nonce: str, tee_pubkey: str) -> None:
    if claims.report_data != broker_binding(nonce=nonce, tee_pubkey=tee_pubkey):
        raise AttestationError(
            "the evidence's report data does not bind this nonce and key broker key"
        )
