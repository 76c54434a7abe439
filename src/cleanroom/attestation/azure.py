"""Azure confidential VMs: the HCL report and the runtime claims it binds (pure).

An Azure CVM's paravisor (HCL) gives the guest an HCL report: a 32-byte header
(``HCLA``, version, report size, request type), the hardware report in a
1184-byte slot (an SEV-SNP report, or a TDX TDREPORT whose quote travels
separately), then the IGVM request data: its size, version, report type
(2 = SNP, 4 = TDX), hash type (1 = SHA-256, 2 = SHA-384, 3 = SHA-512) and the
runtime claims JSON (the vTPM's keys, the VM configuration). The hardware
report's REPORT_DATA starts with that hash of the runtime claims: that is the
only thing tying the claims to the attested guest, so it is always checked.

:func:`verify_azure_hcl` verifies the SNP report inside with
:func:`cleanroom.attestation.snp.verify_snp`. For TDX the HCL's TDREPORT is
MACed for the local CPU only; the signed evidence is the TD quote, verified by
:func:`cleanroom.attestation.dcap.verify_dcap`, and
:func:`bind_azure_tdx_hcl` then checks the TDREPORT is the quote's (same
report data, MRTD, MRCONFIGID, RTMRs) and that the claims are bound.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from datetime import datetime

from cleanroom.attestation.claims import Claims
from cleanroom.attestation.snp import REPORT_LEN, Generation, verify_snp
from cleanroom.errors import AttestationError

HCL_HEADER_LEN = 32
HCL_MAGIC = b"HCLA"
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
_REQUEST_DATA = HCL_HEADER_LEN + REPORT_LEN  # where the IGVM request data starts
_REQUEST_HEADER = struct.Struct("<5I")
_HASHES = {1: "sha256", 2: "sha384", 3: "sha512"}
TDREPORT_LEN = 1024
MAX_HCL_LEN = 64 * 1024


@dataclass(frozen=True)
class HclReport:
    hardware_report: bytes  # the 1184-byte slot: an SNP report, or a TDREPORT and zeros
    report_type: int
    hash_name: str
    runtime_claims: bytes


def parse_hcl(raw: bytes) -> HclReport:
    """Parse an HCL report, refusing sizes that disagree with each other."""
    if len(raw) > MAX_HCL_LEN:
        raise AttestationError(f"an HCL report of {len(raw)} bytes is larger than accepted")
    if len(raw) < _REQUEST_DATA + _REQUEST_HEADER.size or raw[:4] != HCL_MAGIC:
        raise AttestationError("not an Azure HCL report")
    (report_size,) = struct.unpack_from("<I", raw, 8)
    data_size, _, report_type, hash_type, claims_size = _REQUEST_HEADER.unpack_from(
        raw, _REQUEST_DATA
    )
    if data_size != _REQUEST_HEADER.size + claims_size:
        raise AttestationError(
            f"the HCL request data says {data_size} bytes but holds "
            f"{_REQUEST_HEADER.size} + {claims_size}"
        )
    if report_size != _REQUEST_DATA + data_size:
        raise AttestationError(
            f"the HCL report says {report_size} bytes but its parts add up to "
            f"{_REQUEST_DATA + data_size}"
        )
    if report_size > len(raw):
        raise AttestationError(
            f"the HCL report is truncated: {len(raw)} bytes of the {report_size} it declares"
        )
    if any(raw[report_size:]):
        raise AttestationError("the HCL report has data after its declared end")
    hash_name = _HASHES.get(hash_type)
    if hash_name is None:
        raise AttestationError(f"the HCL report names an unknown hash type {hash_type}")
    start = _REQUEST_DATA + _REQUEST_HEADER.size
    return HclReport(
        hardware_report=raw[HCL_HEADER_LEN:_REQUEST_DATA],
        report_type=report_type,
        hash_name=hash_name,
        runtime_claims=raw[start : start + claims_size],
    )


def _bind(hcl: HclReport, claims: Claims) -> Claims:
    digest = hashlib.new(hcl.hash_name, hcl.runtime_claims).digest()
    if claims.report_data[: len(digest)] != digest:
        raise AttestationError(
            f"the report does not bind the HCL runtime claims: report data starts "
            f"{claims.report_data[: len(digest)].hex()}, {hcl.hash_name} of the claims is "
            f"{digest.hex()}"
        )
    return replace(claims, runtime_claims=hcl.runtime_claims)


def verify_azure_hcl(
    hcl_report: bytes, vcek: bytes, *, now: datetime, generation: Generation | None = None
) -> Claims:
    """Verify an Azure SEV-SNP CVM's HCL report: the SNP report inside, and the
    runtime claims after it, which its report data must bind."""
    hcl = parse_hcl(hcl_report)
    if hcl.report_type != REPORT_TYPE_SNP:
        raise AttestationError(
            f"the HCL report holds report type {hcl.report_type}, not an SEV-SNP report"
        )
    claims = verify_snp(hcl.hardware_report, vcek, now=now, generation=generation)
    return _bind(hcl, claims)


def bind_azure_tdx_hcl(hcl_report: bytes, claims: Claims) -> Claims:
    """Bind an Azure TDX CVM's HCL runtime claims to the claims of its TD quote,
    already verified by :func:`cleanroom.attestation.verify_dcap`."""
    hcl = parse_hcl(hcl_report)
    if hcl.report_type != REPORT_TYPE_TDX or claims.platform != "tdx":
        raise AttestationError(
            f"the HCL report holds report type {hcl.report_type} and the quote is "
            f"{claims.platform}: both must be TDX"
        )
    td = hcl.hardware_report
    if any(td[TDREPORT_LEN:]):
        raise AttestationError("the HCL report has data after its TDREPORT")
    # TDREPORT: REPORTMACSTRUCT (report data at 128), then TDINFO at 512
    fields = {
        "report data": (td[128:192].hex(), claims.report_data.hex()),
        "MRTD": (td[528:576].hex(), claims.measurement),
        "MRCONFIGID": (td[576:624].hex(), claims.mr_config_id),
        **{
            f"RTMR{i}": (td[720 + 48 * i : 768 + 48 * i].hex(), rtmr)
            for i, rtmr in enumerate(claims.rtmrs)
        },
    }
    for name, (in_hcl, in_quote) in fields.items():
        if in_hcl != in_quote:
            raise AttestationError(
                f"the HCL report's TDREPORT is not the quote's: {name} is {in_hcl} in the "
                f"HCL report, {in_quote} in the quote"
            )
    if len(claims.rtmrs) != 4:
        raise AttestationError("the TD quote's claims carry no RTMRs to compare")
    return _bind(hcl, claims)
