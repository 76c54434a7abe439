"""Intel TDX and SGX DCAP quotes, verified offline with ``dcap-qvl``.

``verify_dcap(quote, collateral_json, now=...)`` checks (1) the quote's
signature by its attestation key, the QE report signed by the PCK, and the
PCK chain up to the Intel SGX Root CA shipped with cleanroom; (2) the
collateral (TCB info, QE identity, CRLs) is signed, current at ``now`` and
matches the platform, giving a TCB status. Both are ``dcap-qvl``'s work, with
the clock and collateral as inputs; nothing is fetched. It then maps the
quote body into :class:`Claims` (TDX: MRTD, MRCONFIGID (also as host data),
RTMR0-3, TD_ATTRIBUTES.DEBUG; SGX: MRENCLAVE, MRSIGNER, ATTRIBUTES.DEBUG).
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any

import dcap_qvl

from cleanroom.attestation.claims import Claims
from cleanroom.errors import AttestationError

TDX_TEE_TYPE = 0x81
SGX_TEE_TYPE = 0x00
_TD_DEBUG = 0x01  # TD_ATTRIBUTES bit 0
_SGX_DEBUG = 0x02  # ATTRIBUTES.FLAGS bit 1


def intel_root() -> bytes:
    return (
        resources.files("cleanroom.attestation")
        .joinpath("anchors/intel-sgx-root-ca.der")
        .read_bytes()
    )


def parse_quote(quote: bytes) -> Any:
    try:
        return dcap_qvl.Quote.parse(quote)
    except ValueError as exc:
        raise AttestationError(f"not a DCAP quote: {exc}") from exc


def claims_of(parsed: Any, *, status: str = "", advisories: tuple[str, ...] = ()) -> Claims:
    """Map a parsed quote body to :class:`Claims` (pure; verification is separate)."""
    tee_type = parsed.header.tee_type
    report = parsed.report
    if tee_type == TDX_TEE_TYPE:
        return Claims(
            platform="tdx",
            measurement=report.mr_td.hex(),
            report_data=bytes(report.report_data),
            host_data=report.mr_config_id.hex(),
            debug=bool(report.td_attributes[0] & _TD_DEBUG),
            tcb={"tee_tcb_svn": report.tee_tcb_svn.hex()},
            signing_key="PCK",
            assurance="hardware",
            version=parsed.header.version,
            tcb_status=status,
            advisories=advisories,
            mr_config_id=report.mr_config_id.hex(),
            rtmrs=tuple(bytes(getattr(report, f"rt_mr{i}")).hex() for i in range(4)),
        )
    if tee_type == SGX_TEE_TYPE:
        return Claims(
            platform="sgx",
            measurement=report.mr_enclave.hex(),
            report_data=bytes(report.report_data),
            host_data="",
            debug=bool(report.attributes[0] & _SGX_DEBUG),
            tcb={"cpu_svn": report.cpu_svn.hex()},
            signing_key="PCK",
            assurance="hardware",
            version=parsed.header.version,
            tcb_status=status,
            advisories=advisories,
            signer=report.mr_signer.hex(),
        )
    raise AttestationError(f"unknown DCAP TEE type {tee_type:#x}")


def verify_dcap(quote: bytes, collateral_json: str, *, now: datetime) -> Claims:
    """Verify a TDX or SGX quote with its collateral at ``now``; see the module notes."""
    parsed = parse_quote(quote)
    try:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
        verified = dcap_qvl.verify_with_root_ca(
            quote, collateral, intel_root(), int(now.timestamp())
        )
    except (ValueError, TypeError) as exc:
        raise AttestationError(f"the DCAP quote does not verify: {exc}") from exc
    return claims_of(parsed, status=str(verified.status), advisories=tuple(verified.advisory_ids))
